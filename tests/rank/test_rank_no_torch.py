"""`xfer rank`'s scoring path in a subprocess where torch, scikit-learn and SciPy cannot be imported."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[2]

SCRIPT = textwrap.dedent("""
    import importlib.abc, json, sys
    from pathlib import Path

    BLOCKED = {"torch", "opacus", "sklearn", "scipy", "torchvision", "safetensors"}

    class Blocker(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name.partition(".")[0] in BLOCKED:
                raise ImportError(f"{name} is blocked: ranking must not import it")
            return None

    sys.meta_path.insert(0, Blocker())
    onnx_path, npz = Path(sys.argv[1]), sys.argv[2]

    import xfer.client.rank
    assert "onnxruntime" not in sys.modules, "the package must import lazily"
    from xfer.client.onnxhead.features import FeatureExtractor
    from xfer.client.rank.data import load_training_split
    from xfer.client.rank.scores import score_features
    from xfer.models.card import ModelCard

    card = ModelCard.from_dict(json.loads((onnx_path.parent / "card.json").read_text()))
    data = load_training_split(npz, card=card, seed=0)
    score = score_features(FeatureExtractor(onnx_path)(data.x), data.y)
    print(json.dumps({"logme": score.logme, "knn": score.knn_accuracy, "n": score.examples}))
""")


def test_scores_come_from_onnx_features_without_torch(tmp_path, source_model_dir):
    rng = np.random.default_rng(0)
    x = rng.random((60, 1, 8, 8)).astype(np.float32)
    y = np.repeat(np.arange(3), 20)
    x[y == 1, :, :4] += 1.0  # something for the features to find
    np.savez(tmp_path / "data.npz", x=x, y=y)
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(source_model_dir / "model.onnx"), str(tmp_path / "data.npz")],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["n"] == 36 and np.isfinite(result["logme"]) and 0 <= result["knn"] <= 1  # 60% of 60 train
