"""Errors raised by `client.finetune`. Each is also the matching builtin.

Messages say what happened and how to fix it.
"""

from xfer.errors import EXIT_CODES, XferError


class FinetuneError(XferError):
    """Base class of every error raised by `client.finetune`."""

    exit_code = EXIT_CODES["invalid_argument"]


class DataError(FinetuneError, ValueError):
    """A target data set that is malformed or does not fit the model card."""


class UnknownStrategyError(FinetuneError, LookupError):
    """A strategy name that is not in the registry."""


class DuplicateStrategyError(FinetuneError, ValueError):
    """A strategy name registered twice."""


class StrategyError(FinetuneError, ValueError):
    """A strategy that cannot be applied to this model (e.g. an unknown block)."""


class PrivacyError(FinetuneError, ValueError):
    """A differential-privacy configuration or model that Opacus cannot train."""


class PrivacyBudgetExceededError(PrivacyError):
    """A run (or search) that would take a data set past its privacy budget."""

    exit_code = EXIT_CODES["privacy_budget"]


class DivergedError(FinetuneError, ArithmeticError):
    """Training left NaN or infinite weights (the learning rate was too high for this model and data)."""


class SearchError(FinetuneError, ValueError):
    """A hyperparameter search that cannot run as configured."""


class DeviceError(FinetuneError, RuntimeError):
    """A requested device that is not available on this machine."""

    exit_code = EXIT_CODES["device_unavailable"]


class DPUnsupportedError(PrivacyError):
    """A strategy whose loss is not a sum of per-example terms, asked to train under DP-SGD."""
