"""Batched feature extraction with onnxruntime from real exported models."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from xfer.client.onnxhead.errors import HeadDataError, OnnxModelError
from xfer.client.onnxhead.features import FeatureExtractor, extract_features


@pytest.fixture(scope="module")
def examples(convnet_source):
    return np.random.default_rng(0).normal(size=(37, 1, 8, 8)).astype(np.float32)


def test_batches_give_the_same_features_as_one_pass(convnet_source, examples):
    whole = extract_features(convnet_source.onnx, examples, batch_size=1000)
    for batch_size in (1, 7, 36):
        np.testing.assert_array_equal(extract_features(convnet_source.onnx, examples, batch_size=batch_size), whole)
    assert whole.shape == (37, 64) and whole.dtype == np.float32


def test_memory_mapped_examples_are_read_in_batches(convnet_source, examples, tmp_path):
    path = tmp_path / "x.npy"
    np.save(path, examples.astype(np.float64))  # any float dtype is converted batch by batch
    mapped = np.load(path, mmap_mode="r")
    np.testing.assert_allclose(
        extract_features(convnet_source.onnx, mapped, batch_size=8),
        extract_features(convnet_source.onnx, examples),
        rtol=1e-6,
    )


def test_a_model_with_a_fixed_batch_size_gets_padded_batches(mlp_source, tmp_path):
    fixed = onnx.load(mlp_source.onnx)
    for value in (*fixed.graph.input, *fixed.graph.output):
        value.type.tensor_type.shape.dim[0].dim_value = 4  # pin the batch axis to 4
    path = tmp_path / "fixed.onnx"
    onnx.save(fixed, path)
    x = np.random.default_rng(1).normal(size=(10, 64)).astype(np.float32)
    extractor = FeatureExtractor(path, batch_size=3)
    assert extractor.batch_size == 4
    np.testing.assert_allclose(extractor(x), extract_features(mlp_source.onnx, x), rtol=1e-6)


def test_wrong_shapes_nan_and_empty_inputs_are_clear_errors(convnet_source):
    extractor = FeatureExtractor(convnet_source.onnx)
    with pytest.raises(HeadDataError, match="shape"):
        extractor(np.zeros((3, 64), np.float32))
    bad = np.zeros((3, 1, 8, 8), np.float32)
    bad[1, 0, 0, 0] = np.nan
    with pytest.raises(HeadDataError, match="NaN"):
        extractor(bad)
    with pytest.raises(HeadDataError, match="empty"):
        extractor(np.zeros((0, 1, 8, 8), np.float32))
    with pytest.raises(HeadDataError, match="numbers"):
        extractor(np.array([[["a"] * 8] * 8], dtype=object).reshape(1, 1, 8, 8))


def test_a_model_without_features_is_refused(tmp_path):
    graph = helper.make_graph(
        [helper.make_node("Relu", ["input"], ["logits"])],
        "g",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 4])],
    )
    path = tmp_path / "no-features.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    with pytest.raises(OnnxModelError, match="features"):
        FeatureExtractor(path)
    (tmp_path / "garbage.onnx").write_bytes(b"not a model")
    with pytest.raises(OnnxModelError, match="cannot load"):
        FeatureExtractor(tmp_path / "garbage.onnx")


def test_non_finite_features_are_reported(tmp_path):
    # features = log(input): a negative input gives NaN features.
    graph = helper.make_graph(
        [helper.make_node("Log", ["input"], ["features"]), helper.make_node("Identity", ["features"], ["logits"])],
        "g",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3])],
        [
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3]),
            helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", 3]),
        ],
    )
    path = tmp_path / "log.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    with pytest.raises(HeadDataError, match="NaN or infinite features"):
        extract_features(path, np.array([[1.0, 2.0, 3.0], [-1.0, 1.0, 1.0]], np.float32))
