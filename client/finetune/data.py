"""Target data for the torch engine: the client's data as tensors.

Specs, formats, checks, few-label mode and splits are `xfer.client.targets`
(numpy only, shared with the torch-free head fit); this module wraps its
arrays as tensors. See `xfer.client.targets` for the data-spec syntax.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import torch

from xfer.client import targets
from xfer.client.finetune.errors import DataError
from xfer.client.targets import ArraySplit, parse_spec, split_indices  # noqa: F401  (re-exported)
from xfer.models.card import ModelCard


@dataclasses.dataclass(frozen=True)
class TensorData:
    """Model-ready examples: normalised float32 `x` of the card's input shape, int64 `y` or None (unlabelled).

    `index` holds each example's position in the original source (file rows
    or the data set's pool), so splits can be checked for leakage.
    """

    x: torch.Tensor
    y: torch.Tensor | None
    index: torch.Tensor

    def __len__(self) -> int:
        """Number of examples."""
        return int(self.x.shape[0])

    @property
    def has_labels(self) -> bool:
        """Whether the examples come with labels."""
        return self.y is not None

    def labels(self, purpose: str = "this") -> torch.Tensor:
        """The labels; raises DataError naming `purpose` when the data is unlabelled."""
        if self.y is None:
            raise DataError(
                f"{purpose} needs labelled data, but these examples have no labels (an unlabelled "
                f"data spec, an .npz without 'y' or an image folder without class sub-folders); "
                f"give labels or use a strategy for unlabelled data"
            )
        return self.y

    def subset(self, rows: torch.Tensor | np.ndarray | Sequence[int]) -> TensorData:
        """The examples at `rows` (positions in this data set)."""
        rows = torch.as_tensor(np.asarray(rows), dtype=torch.long)
        return TensorData(self.x[rows], None if self.y is None else self.y[rows], self.index[rows])

    def __repr__(self) -> str:
        labels = "unlabelled" if self.y is None else "labelled"
        return f"TensorData({len(self)} examples of shape {tuple(self.x.shape[1:])}, {labels})"

    def without_labels(self) -> TensorData:
        """The same examples with the labels dropped."""
        return TensorData(self.x, None, self.index)


@dataclasses.dataclass(frozen=True)
class TargetData:
    """A target task: train/val/test splits plus what the ledger and head need.

    `val` is None in few-label mode (all labelled data is the training set)
    and `test` is None when the data has no labels at all. `unlabeled` holds
    further unlabelled training examples where the client has them (in
    few-label mode: the rest of the training split).
    """

    train: TensorData
    val: TensorData | None
    test: TensorData | None
    label_names: tuple[str, ...]
    spec: str
    #: Stable id of the underlying private data, the privacy ledger's key.
    dataset_id: str
    unlabeled: TensorData | None = None
    #: K of few-label mode, else None.
    per_class: int | None = None

    @property
    def num_classes(self) -> int:
        """Number of target classes."""
        return len(self.label_names)

    @property
    def labeled(self) -> bool:
        """Whether the training split has labels."""
        return self.train.has_labels


def _tensors(split: ArraySplit) -> TensorData:
    return TensorData(
        torch.from_numpy(split.x),
        None if split.y is None else torch.from_numpy(split.y),
        torch.from_numpy(np.asarray(split.index, dtype=np.int64)),
    )


def load_target(spec: str, *, card: ModelCard, seed: int = 0, per_class: int | None = None) -> TargetData:
    """The data set `spec` names, read, checked, fitted, normalised and split (`xfer.client.targets.load_arrays`).

    `per_class=K` (or `per_class=K` in the spec) is few-label mode: the training set is K labelled examples
    per class, `val` is None, and the rest of the training split comes back unlabelled as `unlabeled`.
    """
    arrays = targets.load_arrays(spec, card=card, seed=seed, per_class=per_class)
    return TargetData(
        train=_tensors(arrays.train),
        val=_tensors(arrays.val) if arrays.val is not None else None,
        test=_tensors(arrays.test) if arrays.test is not None else None,
        label_names=arrays.label_names,
        spec=arrays.spec,
        dataset_id=arrays.dataset_id,
        unlabeled=_tensors(arrays.unlabeled) if arrays.unlabeled is not None else None,
        per_class=arrays.per_class,
    )


def from_arrays(
    x: np.ndarray,
    y: np.ndarray | None = None,
    *,
    card: ModelCard | None = None,
    label_names: Sequence[str] | None = None,
) -> TensorData:
    """Wraps in-memory arrays as TensorData (checked, fitted and normalised if a card is given); `y=None`: unlabelled."""
    return _tensors(targets.prepare_arrays(x, y, card=card, label_names=label_names))
