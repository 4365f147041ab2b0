"""Graph surgery on real exported models: checker-clean, features kept, logits == the numpy head."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from xfer.client.onnxhead.errors import HeadVerificationError, OnnxModelError
from xfer.client.onnxhead.features import extract_features, open_session
from xfer.client.onnxhead.graph import load_model, replace_head, verify_head, write_model
from xfer.client.onnxhead.head import Center, L2Normalize, LinearHead


def _heads(dim: int, k: int, seed: int = 0) -> dict[str, LinearHead]:
    rng = np.random.default_rng(seed)
    return {
        "linear": LinearHead(rng.normal(size=(k, dim)), rng.normal(size=k)),
        "cosine": LinearHead(
            rng.normal(size=(k, dim)),
            np.zeros(k),
            steps=(L2Normalize(), Center(rng.normal(size=dim) * 0.1), L2Normalize()),
        ),
        "euclidean": LinearHead(
            rng.normal(size=(k, dim)), rng.normal(size=k), steps=(L2Normalize(), Center(rng.normal(size=dim) * 0.1))
        ),
    }


@pytest.mark.parametrize("source_name,shape", [("convnet_source", (1, 8, 8)), ("mlp_source", (64,))])
@pytest.mark.parametrize("kind", ["linear", "cosine", "euclidean"])
def test_surgery_replaces_the_head_and_keeps_the_backbone(request, tmp_path, source_name, shape, kind):
    source = request.getfixturevalue(source_name)
    x = np.random.default_rng(1).normal(size=(20, *shape)).astype(np.float32)
    features = extract_features(source.onnx, x)
    head = _heads(features.shape[1], 7)[kind]
    model = load_model(source.onnx)
    new, report = replace_head(model, head, metadata={"xfer.head": "test"})
    onnx.checker.check_model(new, full_check=True)
    old_head_weights = {t.name for t in model.graph.initializer} - {t.name for t in new.graph.initializer}
    assert any("head" in name for name in old_head_weights) and report.removed_initializers == len(old_head_weights)
    logits_info = next(o for o in new.graph.output if o.name == "logits")
    assert logits_info.type.tensor_type.shape.dim[1].dim_value == 7
    assert {p.key: p.value for p in new.metadata_props}["xfer.head"] == "test"
    path = tmp_path / "new.onnx"
    check = write_model(new, path, check=lambda tmp: verify_head(tmp, head, x=x, features=features))
    assert check.ok and check.max_abs_diff_features == 0.0
    session = open_session(path)
    logits, got_features = session.run(["logits", "features"], {session.get_inputs()[0].name: x})
    np.testing.assert_array_equal(got_features, features)
    np.testing.assert_allclose(logits, head.logits(features), rtol=1e-5, atol=1e-5)
    assert logits.shape == (20, 7)


def test_outputs_computed_from_logits_read_the_new_logits(mlp_source, tmp_path):
    model = load_model(mlp_source.onnx)
    model.graph.node.append(helper.make_node("Softmax", ["logits"], ["probs"], axis=1))
    model.graph.output.append(helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["batch", 3]))
    head = _heads(16, 5)["cosine"]
    new, _ = replace_head(model, head)
    path = tmp_path / "probs.onnx"
    write_model(new, path)
    session = open_session(path)
    x = np.random.default_rng(2).normal(size=(6, 64)).astype(np.float32)
    logits, probs, features = session.run(["logits", "probs", "features"], {"input": x})
    want = np.exp(head.logits(features))
    np.testing.assert_allclose(probs, want / want.sum(axis=1, keepdims=True), rtol=1e-5, atol=1e-6)
    assert [n.op_type for n in new.graph.node].index("Softmax") > [n.op_type for n in new.graph.node].index("Gemm")


def test_opset_18_models_get_reduce_l2_with_axes_as_input(mlp_source, tmp_path):
    from onnx import version_converter

    model = version_converter.convert_version(load_model(mlp_source.onnx), 18)
    head = _heads(16, 4)["cosine"]
    new, _ = replace_head(model, head)
    reduce = next(n for n in new.graph.node if n.op_type == "ReduceL2")
    assert len(reduce.input) == 2 and not any(a.name == "axes" for a in reduce.attribute)
    x = np.random.default_rng(3).normal(size=(5, 64)).astype(np.float32)
    write_model(
        new,
        tmp_path / "m18.onnx",
        check=lambda tmp: verify_head(tmp, head, x=x, features=extract_features(mlp_source.onnx, x)),
    )


def test_double_precision_features_get_a_double_head(tmp_path):
    graph = helper.make_graph(
        [
            helper.make_node("Relu", ["input"], ["features"]),
            helper.make_node("Gemm", ["features", "w", "b"], ["logits"], transB=1),
        ],
        "g",
        [helper.make_tensor_value_info("input", TensorProto.DOUBLE, ["batch", 3])],
        [
            helper.make_tensor_value_info("logits", TensorProto.DOUBLE, ["batch", 2]),
            helper.make_tensor_value_info("features", TensorProto.DOUBLE, ["batch", 3]),
        ],
        initializer=[
            onnx.numpy_helper.from_array(np.ones((2, 3)), "w"),
            onnx.numpy_helper.from_array(np.zeros(2), "b"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    head = _heads(3, 4)["euclidean"]
    new, _ = replace_head(model, head)
    x = np.abs(np.random.default_rng(4).normal(size=(8, 3))) + 0.1
    report = verify_head(new.SerializeToString(), head, x=x, features=x)
    assert report.max_abs_diff_logits < 1e-12  # float64 end to end


def test_a_head_with_nan_is_refused_before_anything_is_written(convnet_source):
    bad = LinearHead(np.full((3, 64), np.nan), np.zeros(3))
    with pytest.raises(HeadVerificationError, match="NaN"):
        replace_head(load_model(convnet_source.onnx), bad)


def test_verification_failure_leaves_the_previous_file_in_place(convnet_source, tmp_path):
    x = np.random.default_rng(5).normal(size=(4, 1, 8, 8)).astype(np.float32)
    features = extract_features(convnet_source.onnx, x)
    written, other = _heads(64, 3, seed=1)["linear"], _heads(64, 3, seed=2)["linear"]
    path = tmp_path / "model.onnx"
    path.write_bytes(b"previous result")
    new, _ = replace_head(load_model(convnet_source.onnx), written)
    with pytest.raises(HeadVerificationError, match="does not compute"):
        write_model(new, path, check=lambda tmp: verify_head(tmp, other, x=x, features=features))
    assert path.read_bytes() == b"previous result"
    assert list(tmp_path.iterdir()) == [path]  # no temp file left behind
    nan_features = features.copy()
    nan_features[0, 0] = np.nan
    with pytest.raises(HeadVerificationError):  # NaN anywhere is a failure, never "within tolerance"
        write_model(new, path, check=lambda tmp: verify_head(tmp, written, x=x, features=nan_features))


def test_models_without_the_expected_outputs_are_refused(convnet_source):
    model = load_model(convnet_source.onnx)
    head = _heads(64, 3)["linear"]
    with pytest.raises(OnnxModelError, match="reads 10 features|features"):
        replace_head(model, _heads(10, 3)["linear"])
    renamed = onnx.ModelProto()
    renamed.CopyFrom(model)
    del renamed.graph.output[1]  # drop 'features'
    with pytest.raises(OnnxModelError, match="features"):
        replace_head(renamed, head)


def test_a_node_computing_logits_and_kept_tensors_is_refused():
    graph = helper.make_graph(
        [helper.make_node("Split", ["input"], ["features", "logits"], axis=1, num_outputs=2)],
        "g",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 4])],
        [
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 2]),
            helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", 2]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    with pytest.raises(OnnxModelError, match="cannot be replaced"):
        replace_head(model, _heads(2, 3)["linear"])
