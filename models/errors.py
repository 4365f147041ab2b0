"""Errors raised by the model zoo. Each is also the matching builtin."""

from xfer.errors import EXIT_CODES, XferError


class ModelError(XferError):
    """Base class of every error raised by `models`: the model or its card cannot be used as given."""

    exit_code = EXIT_CODES["invalid_argument"]


class UnknownArchitectureError(ModelError, LookupError):
    """An architecture id that is not in the registry."""


class DuplicateArchitectureError(ModelError, ValueError):
    """An architecture id registered twice."""


class InvalidConfigError(ModelError, ValueError):
    """An architecture config with unknown, missing or ill-typed fields."""


class InvalidCardError(ModelError, ValueError):
    """A model card that is malformed or disagrees with its architecture."""


class WeightsMismatchError(ModelError, ValueError):
    """Weights whose tensor names, dtypes or shapes do not fit the architecture."""


class ExportParityError(ModelError, ValueError):
    """An ONNX export whose outputs disagree with the torch module."""


class DatasetUnavailableError(ModelError, LookupError):
    """A built-in data set whose files are not installed (the message says how to install them)."""
