"""Shared range checks for architecture configs."""

from xfer.models.errors import InvalidConfigError


def require_positive(**values: int | float) -> None:
    """Raises InvalidConfigError naming the first non-positive value."""
    for name, value in values.items():
        if value <= 0:
            raise InvalidConfigError(f"config field {name!r} must be positive, got {value}")


def require_classes(num_classes: int) -> None:
    """A classifier needs at least two classes."""
    if num_classes < 2:
        raise InvalidConfigError(f"num_classes must be at least 2, got {num_classes}")
