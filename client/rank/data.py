"""The client's labelled training examples, prepared for one candidate's card (numpy only).

Reading, checks, fitting to the card, normalisation and the split are
`xfer.client.targets`, shared with `xfer finetune` and `xfer fit-head`: with
the same seed the training split is exactly the one fine-tuning trains on,
so a ranking can be checked against fine-tuning results. Every data format
is read without torch.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from xfer.client import targets
from xfer.client.rank.errors import RankError
from xfer.models.card import ModelCard


@dataclasses.dataclass(frozen=True, eq=False)
class Labelled:
    """Model-ready training examples of one candidate's input spec, their labels, and the ledger-style id."""

    x: np.ndarray
    y: np.ndarray
    dataset_id: str


def load_training_split(spec: str, *, card: ModelCard, seed: int) -> Labelled:
    """The labelled training split of DATA, normalised and shaped for `card`; raises RankError without labels."""
    arrays = targets.load_arrays(spec, card=card, seed=seed)
    if arrays.train.y is None:
        raise RankError(
            f"{spec}: ranking scores how well a source's features fit the client's labels, and this "
            f"data has none; give labelled examples"
        )
    return Labelled(np.asarray(arrays.train.x), np.asarray(arrays.train.y), arrays.dataset_id)
