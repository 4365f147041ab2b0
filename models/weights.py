"""Weights as safetensors: never pickle.

`tensor_specs` is the ground truth the server checks uploads against; a
module is loaded strictly so that a missing or extra tensor is an error,
not a silently random layer.
"""

from __future__ import annotations

import math
import os

import torch
from safetensors.torch import load_file, save_file

from xfer.models.base import XferModel
from xfer.models.card import ModelCard
from xfer.models.errors import InvalidCardError, ModelError, WeightsMismatchError
from xfer.models.files import atomic_path
from xfer.models.registry import create_model


def tensor_specs(model: torch.nn.Module) -> dict[str, tuple[str, tuple[int, ...]]]:
    """name -> (safetensors dtype string, shape) for every tensor of the state dict."""
    names = {
        torch.float32: "F32",
        torch.float16: "F16",
        torch.bfloat16: "BF16",
        torch.float64: "F64",
        torch.int64: "I64",
        torch.int32: "I32",
        torch.bool: "BOOL",
        torch.uint8: "U8",
    }
    return {k: (names[v.dtype], tuple(v.shape)) for k, v in model.state_dict().items()}


#: Bytes per element of each safetensors dtype string (an unknown one counts 8, the widest).
DTYPE_BYTES = {"F32": 4, "F16": 2, "BF16": 2, "F64": 8, "I64": 8, "I32": 4, "BOOL": 1, "U8": 1}


def weights_size(model: torch.nn.Module) -> tuple[int, int]:
    """(parameters, bytes) of the model's state dict; works on the meta device, so nothing need be allocated."""
    specs = list(tensor_specs(model).values())
    numbers = [math.prod(shape) for _, shape in specs]
    return sum(numbers), sum(n * DTYPE_BYTES.get(dtype, 8) for n, (dtype, _) in zip(numbers, specs))


def require_weights_fit(card: ModelCard, *, artifact_bytes: int) -> None:
    """Raises WeightsMismatchError, before anything is allocated, when the card's weights exceed the artifact.

    The card and the artifact come from the server; a card describing a far
    larger model than the verified file holds would otherwise be allocated
    in full before the strict load could refuse it.
    """
    with torch.device("meta"):
        _, needed = weights_size(model_from_card(card))
    if needed > artifact_bytes:
        raise WeightsMismatchError(
            f"the card describes {needed:,} bytes of weights but the safetensors artifact holds {artifact_bytes:,}"
        )


def model_from_card(card: ModelCard) -> XferModel:
    """A freshly initialised module of the card's architecture and config.

    This is where a card meets its architecture: raises InvalidCardError if
    the architecture is unknown, the config invalid, or the card's blocks,
    head, classes or input shape disagree with the module it describes.
    """
    try:
        model = create_model(card.architecture, **card.architecture_config)
    except ModelError as exc:
        raise InvalidCardError(f"card architecture: {exc}") from None
    if tuple(card.blocks) != tuple(model.block_names()):
        raise InvalidCardError(
            f"card blocks {list(card.blocks)} do not match {card.architecture}'s blocks {model.block_names()}"
        )
    if card.head != model.head_name:
        raise InvalidCardError(f"card head {card.head!r} is not the architecture's head {model.head_name!r}")
    if card.num_classes != model.num_classes:
        raise InvalidCardError(f"card num_classes {card.num_classes} disagrees with the config's {model.num_classes}")
    if tuple(card.input_shape) != model.input_shape():
        raise InvalidCardError(
            f"card input_shape {list(card.input_shape)} disagrees with the config's {list(model.input_shape())}"
        )
    if card.tasks:
        from xfer.models.multitask import attach_task_heads

        # A multi-task source's further heads are part of its weights (task_heads.<name>.*).
        attach_task_heads(model, card.tasks[1:])
    return model


def save_safetensors(
    model: torch.nn.Module, path: str | os.PathLike, *, metadata: dict[str, str] | None = None
) -> None:
    """Writes the state dict atomically (temp file, fsync, rename)."""
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(state, tmp, metadata=metadata)


def load_safetensors(model: torch.nn.Module, path: str | os.PathLike) -> torch.nn.Module:
    """Loads weights strictly, raising WeightsMismatchError naming what differs."""
    state = load_file(str(path))
    expected = tensor_specs(model)
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    if missing or extra:
        raise WeightsMismatchError(
            f"weights do not fit the architecture: missing {missing[:5]}, unexpected {extra[:5]}"
        )
    for name, tensor in state.items():
        if tuple(tensor.shape) != expected[name][1]:
            raise WeightsMismatchError(
                f"tensor {name!r} has shape {list(tensor.shape)}, the architecture needs {list(expected[name][1])}"
            )
    model.load_state_dict(state, strict=True)
    return model
