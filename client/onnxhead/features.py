"""The ONNX model's `features` output for the client's examples, batched, with onnxruntime.

Only the `features` output is requested, so onnxruntime runs just the
backbone. Examples are fed `batch_size` rows at a time from any array-like
(a `np.memmap` works), and the features land in one preallocated
(n, D) float32 array: memory is the model, one batch, and the features.
A model whose input has a fixed batch size gets batches of exactly that
size (the last one padded, the padding dropped).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any

import numpy as np

from xfer.client.onnxhead.errors import HeadDataError, HeadError, OnnxModelError

log = logging.getLogger(__name__)

FEATURES = "features"
LOGITS = "logits"
DEFAULT_BATCH_SIZE = 256
_NUMPY_TYPES = {"tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16}


@dataclasses.dataclass(frozen=True)
class SessionOptions:
    """How onnxruntime runs: execution providers and CPU threads (0: onnxruntime's choice)."""

    providers: tuple[str, ...] = ("CPUExecutionProvider",)
    intra_op_threads: int = 0

    def __post_init__(self) -> None:
        if self.intra_op_threads < 0:
            raise HeadError(f"threads must be 0 (onnxruntime's choice) or more, got {self.intra_op_threads}")


def open_session(model: str | os.PathLike | bytes, *, options: SessionOptions = SessionOptions()) -> Any:
    """An `onnxruntime.InferenceSession` on a path or serialised model."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = options.intra_op_threads
    so.log_severity_level = 3  # warnings about unused initializers are noise here
    source = model if isinstance(model, bytes) else os.fspath(model)
    try:
        return ort.InferenceSession(source, sess_options=so, providers=list(options.providers))
    except Exception as exc:  # onnxruntime raises its own exception types for unreadable models
        raise OnnxModelError(f"onnxruntime cannot load the model: {exc}") from None


class FeatureExtractor:
    """Runs the `features` output of an ONNX model over examples in batches."""

    def __init__(
        self,
        model: str | os.PathLike | bytes,
        *,
        batch_size: int = DEFAULT_BATCH_SIZE,
        options: SessionOptions = SessionOptions(),
    ) -> None:
        if batch_size < 1:
            raise HeadDataError(f"batch_size must be positive, got {batch_size}")
        self.session = open_session(model, options=options)
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise OnnxModelError(
                f"the model has {len(inputs)} inputs ({[i.name for i in inputs]}); "
                f"a head fit needs a model with exactly one input"
            )
        self.input = inputs[0]
        outputs = {o.name: o for o in self.session.get_outputs()}
        missing = [name for name in (FEATURES, LOGITS) if name not in outputs]
        if missing:
            raise OnnxModelError(
                f"the model has no output(s) {missing} (it has {sorted(outputs)}); xfer models "
                f"output 'logits' and 'features'"
            )
        shape = outputs[FEATURES].shape
        if len(shape) != 2:
            raise OnnxModelError(f"the 'features' output must be (batch, D), got shape {shape}")
        self.feature_dim: int | None = shape[1] if isinstance(shape[1], int) else None
        self.dtype = _NUMPY_TYPES.get(self.input.type)
        if self.dtype is None:
            raise OnnxModelError(f"unsupported input type {self.input.type}; use a float input")
        batch_dim = self.input.shape[0] if self.input.shape else None
        self.fixed_batch = batch_dim if isinstance(batch_dim, int) and batch_dim > 0 else None
        self.batch_size = self.fixed_batch or batch_size
        self.example_shape: tuple[int | None, ...] = tuple(
            d if isinstance(d, int) else None for d in self.input.shape[1:]
        )

    def check_examples(self, x: Any) -> None:
        """Raises HeadDataError unless `x` is (n, *input shape) numbers."""
        shape = tuple(getattr(x, "shape", ()))
        if len(shape) != 1 + len(self.example_shape) or any(
            want is not None and got != want for got, want in zip(shape[1:], self.example_shape)
        ):
            want = ["n", *("?" if d is None else d for d in self.example_shape)]
            raise HeadDataError(
                f"examples have shape {list(shape)} but the model takes {want}; reshape them "
                f"(and normalise them as the model card says) first"
            )
        if not np.issubdtype(np.asarray(x[:0]).dtype, np.number):
            raise HeadDataError(f"examples must be numbers, got dtype {np.asarray(x[:0]).dtype}")

    def __call__(self, x: Any) -> np.ndarray:
        """Features (n, D) float32 of the examples `x` (an array-like indexed by rows)."""
        self.check_examples(x)
        n = int(x.shape[0])
        out: np.ndarray | None = None
        for start in range(0, n, self.batch_size):
            batch = np.ascontiguousarray(x[start : start + self.batch_size], dtype=self.dtype)
            rows = len(batch)
            if self.fixed_batch and rows < self.fixed_batch:
                batch = np.concatenate([batch, np.zeros((self.fixed_batch - rows, *batch.shape[1:]), batch.dtype)])
            if not np.all(np.isfinite(batch)):
                raise HeadDataError(
                    f"NaN or infinite values in examples {start}..{start + rows - 1}; impute or drop them"
                )
            (features,) = self.session.run([FEATURES], {self.input.name: batch})
            features = features[:rows]
            if out is None:
                out = np.empty((n, features.shape[1]), dtype=np.float32)
            out[start : start + rows] = features
        if out is None:
            raise HeadDataError("no examples: the data set is empty")
        bad = ~np.isfinite(out).all(axis=1)
        if bad.any():
            raise HeadDataError(
                f"the model produced NaN or infinite features for {int(bad.sum())} example(s) "
                f"(first rows: {np.nonzero(bad)[0][:5].tolist()}); check their input scale"
            )
        return out


def extract_features(
    model: str | os.PathLike | bytes,
    x: Any,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    options: SessionOptions = SessionOptions(),
) -> np.ndarray:
    """One-call form of `FeatureExtractor(model)(x)`."""
    return FeatureExtractor(model, batch_size=batch_size, options=options)(x)
