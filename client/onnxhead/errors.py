"""Errors raised by `xfer.client.onnxhead`; each is also the matching builtin.

Messages say what happened and how to fix it. A refused privacy budget is
the ledger's own `PrivacyBudgetExceededError` (shared with the torch path).
"""

from __future__ import annotations

from xfer.errors import EXIT_CODES, XferError


class HeadError(XferError):
    """Base class of every error raised by `xfer.client.onnxhead`."""

    exit_code = EXIT_CODES["invalid_argument"]


class HeadDataError(HeadError, ValueError):
    """Training or evaluation data that is malformed or does not fit the ONNX model."""


class OnnxModelError(HeadError, ValueError):
    """An ONNX model without the `features`/`logits` outputs (or inputs) a head fit needs."""


class UnknownHeadError(HeadError, LookupError):
    """A head name that is not in the registry."""


class DuplicateHeadError(HeadError, ValueError):
    """A head name registered twice."""


class HeadPrivacyError(HeadError, ValueError):
    """A differential-privacy configuration that cannot be met."""


class HeadVerificationError(HeadError, RuntimeError):
    """The written ONNX model does not compute what the fitted head computes (or produced NaN)."""

    exit_code = EXIT_CODES["failure"]
