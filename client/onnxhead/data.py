"""Torch-free data for `xfer fit-head`: every data spec `xfer finetune` takes, as numpy arrays.

Reading, checks, fitting to the card, normalisation and the splits are
`xfer.client.targets`, shared with the torch engine, so the two commands
train and test on the same examples and their reports compare. A separate
``--test`` file replaces the held-out split: DATA is then split 80/20 into
train and val and the test file is used whole.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from xfer.client import targets
from xfer.client.domain import pow2_at_least
from xfer.client.onnxhead.errors import HeadDataError
from xfer.client.targets import (  # noqa: F401  (re-exported)
    ArraySplit,
    integer_labels,
    numbered_label_names,
    prepare_arrays,
    split_indices,
)
from xfer.models.card import ModelCard


@dataclasses.dataclass(frozen=True, eq=False)
class HeadData:
    """Train/val/test splits, label names, the ledger key, and what the report may round to.

    `min_eval_examples` is the smallest test split any data set with a training
    split in the same power-of-two bucket could have produced: metric fractions
    rounded to 1/2^⌊log2 of it⌋ stay consistent with every size in the bucket.
    """

    train: ArraySplit
    val: ArraySplit | None
    test: ArraySplit
    label_names: tuple[str, ...]
    dataset_id: str
    min_eval_examples: int


def prepare_examples(x: np.ndarray, *, card: ModelCard) -> np.ndarray:
    """Checks, reshapes to (n, *card.input_shape) and normalises raw examples as the card says."""
    return prepare_arrays(x, card=card).x


def min_eval_for_split(*, train_pow2: int, num_classes: int) -> int:
    """Smallest test split of a 60/20/20 split whose training split is in the bucket (B/2, B].

    Per class, t_c >= (r_c − 1)/3 − 1/2 for training part r_c (rounding of 0.2·n_c),
    so m = Σ t_c >= (n_train − K)/3 − K/2 with n_train >= B/2 + 1.
    """
    return max(1, math.ceil((train_pow2 // 2 + 1 - num_classes) / 3 - num_classes / 2))


def own_bucket_floor(examples: int) -> int:
    """The smallest size in an independent eval set's own power-of-two bucket."""
    return pow2_at_least(examples) // 2 + 1 if examples > 1 else 1


def load_data(spec: str, *, card: ModelCard, seed: int = 0, test: str | None = None) -> HeadData:
    """Reads, checks, normalises and splits DATA (and an optional separate test file)."""
    arrays = targets.load_arrays(spec, card=card, seed=seed, holdout_test=test is None)
    if arrays.train.y is None:
        raise HeadDataError(
            f"{spec}: a head is fitted on labelled examples, and this data has none; give labels "
            "(or adapt to unlabelled data with `xfer finetune --strategy` of a source-free method)"
        )
    held_out = arrays.test if test is None else targets.load_all(test, card=card, label_names=arrays.label_names)
    if held_out is None or held_out.y is None or len(held_out) == 0:
        raise HeadDataError(f"{test or spec}: no labelled test examples to score the head on")
    independent = test is not None or arrays.per_class is not None
    floor = (
        own_bucket_floor(len(held_out))
        if independent
        else min_eval_for_split(train_pow2=pow2_at_least(len(arrays.train)), num_classes=len(arrays.label_names))
    )
    return HeadData(
        arrays.train, arrays.val, held_out, arrays.label_names, arrays.dataset_id, min(floor, len(held_out))
    )
