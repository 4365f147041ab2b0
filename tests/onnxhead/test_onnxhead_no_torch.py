"""The torch-free path, in a subprocess where torch, Opacus, scikit-learn and SciPy cannot be imported."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[2]

SCRIPT = textwrap.dedent("""
    import argparse, importlib.abc, json, sys
    from pathlib import Path

    BLOCKED = {"torch", "opacus", "sklearn", "scipy", "torchvision", "safetensors"}

    class Blocker(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name.partition(".")[0] in BLOCKED:
                raise ImportError(f"{name} is blocked: the torch-free path must not import it")
            return None

    sys.meta_path.insert(0, Blocker())
    onnx_path, npz, out = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])

    import xfer.client.onnxhead
    assert "onnxruntime" not in sys.modules and "onnx" not in sys.modules, "the package must import lazily"

    from xfer.client.onnxhead import HeadDataError, PrivacyConfig, command, fit_head
    from xfer.client.onnxhead.data import load_data
    from xfer.client.finetune.ledger import PrivacyLedger
    from xfer.models.card import ModelCard

    card = ModelCard.from_dict(json.loads((onnx_path.parent / "card.json").read_text()))
    data = load_data(npz, card=card, seed=0)
    results = []
    for strategy in ("logreg", "prototype"):
        for privacy in (None, PrivacyConfig(epsilon=4.0)):
            ledger = PrivacyLedger(out / "ledger.json") if privacy else None
            r = fit_head(onnx_path, train=data.train, val=data.val, test=data.test, strategy=strategy,
                         label_names=data.label_names, card=card, privacy=privacy, ledger=ledger,
                         dataset_id=data.dataset_id, out_dir=out / f"{strategy}-{bool(privacy)}")
            assert r.verification.ok
            results.append((r.strategy, privacy is not None, r.test_metrics.accuracy))
    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    outcome = command.run(parser.parse_args([npz, "--out", str(out / "cli"), "--dp-epsilon", "2"]),
                          onnx_path=onnx_path, card=card, cache_dir=out / "cache", progress=False)
    assert outcome.report_fields()["privacy"]["dp"]
    from xfer.client.finetune.errors import DataError
    try:
        load_data("digits:classes=5-9", card=card)
    except DataError as exc:
        assert "scikit-learn" in str(exc)
    else:
        raise AssertionError("digits loaded without scikit-learn")
    leaked = sorted(m for m in sys.modules if m.partition(".")[0] in BLOCKED)
    assert not leaked, leaked
    print(json.dumps(results))
""")


def test_fit_head_runs_without_torch_opacus_or_scikit_learn(convnet_source, tmp_path):
    from xfer.models.digits import load_pool, select_classes

    data = select_classes(load_pool("target"), [5, 6, 7, 8, 9])
    npz = tmp_path / "data.npz"
    np.savez(npz, x=data.x, y=data.y, label_names=np.array(data.label_names))
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(convnet_source.onnx), str(npz), str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = __import__("json").loads(done.stdout.strip().splitlines()[-1])
    assert [(s, dp) for s, dp, _ in results] == [
        ("onnx-logreg", False),
        ("onnx-logreg", True),
        ("onnx-prototype", False),
        ("onnx-prototype", True),
    ]
    assert all(0.0 <= acc <= 1.0 for _, _, acc in results)
