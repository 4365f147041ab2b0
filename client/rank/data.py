"""The client's labelled training examples, prepared for one candidate's card.

`.npz` files and `digits` specs are read torch-free (`xfer.client.onnxhead.data`);
any other spec (`fashion-mnist`, `mnist5k`, CSV, image folders) through
`xfer.client.finetune.data`, which needs torch for resizing. Either way the
training split is exactly the one `xfer finetune` trains on with the same seed,
so a ranking can be checked against fine-tuning results.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from xfer.client.rank.errors import RankError
from xfer.models.card import ModelCard


@dataclasses.dataclass(frozen=True, eq=False)
class Labelled:
    """Model-ready training examples of one candidate's input spec, their labels, and the ledger-style id."""

    x: np.ndarray
    y: np.ndarray
    dataset_id: str


def _torch_free(spec: str) -> bool:
    text = spec.strip()
    return text == "digits" or text.startswith("digits:") or text.lower().endswith(".npz")


def load_training_split(spec: str, *, card: ModelCard, seed: int) -> Labelled:
    """The training split of DATA, normalised and shaped for `card`."""
    if _torch_free(spec):
        from xfer.client.onnxhead.data import load_data
        from xfer.client.onnxhead.errors import HeadError

        try:
            data = load_data(spec, card=card, seed=seed)
        except HeadError as exc:
            raise RankError(str(exc)) from None
        return Labelled(np.asarray(data.train.x), np.asarray(data.train.y), data.dataset_id)
    try:
        from xfer.client.finetune.data import load_target
    except ImportError:
        raise RankError(f"{spec}: this data needs torch to be prepared (pip install 'xfer[finetune]'), or give it "
                        f"as an .npz file (arrays x, y)") from None
    target = load_target(spec, card=card, seed=seed)
    if target.train.y is None:
        raise RankError(f"{spec}: ranking needs labelled examples; this data has none")
    return Labelled(target.train.x.numpy(), target.train.y.numpy(), target.dataset_id)
