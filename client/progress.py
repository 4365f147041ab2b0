"""Progress for the CLI: a tqdm bar on stderr, drawn only when stderr is a terminal."""

from __future__ import annotations

from typing import TextIO

from tqdm import tqdm


def human_bytes(n: float) -> str:
    """1536 -> '1.5 KiB'."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"  # pragma: no cover


class ProgressBar:
    """Callable as `progress(done, total)` (the SDK's progress contract), drawn by tqdm.

    Silent when `stream` is not a TTY, so pipes, logs and `--json` output
    stay clean.
    """

    def __init__(self, label: str, *, stream: TextIO, unit: str = "bytes") -> None:
        self.enabled = bool(getattr(stream, "isatty", lambda: False)())
        byte_units = unit == "bytes"
        self._bar = tqdm(
            desc=label,
            file=stream,
            disable=not self.enabled,
            unit="B" if byte_units else unit,
            unit_scale=byte_units,
            unit_divisor=1024,
            mininterval=0.1,
            leave=True,
        )

    def __call__(self, done: float, total: float) -> None:
        if self._bar.total != total:
            self._bar.total = total
        self._bar.update(done - self._bar.n)

    def close(self) -> None:
        """Ends the bar's line, if one was drawn."""
        self._bar.close()
