"""A small progress bar for the CLI: stderr only, and only when stderr is a terminal."""

from __future__ import annotations

import time
from typing import TextIO

_WIDTH = 28
#: Seconds between redraws; fast transfers would otherwise spend their time drawing.
_INTERVAL = 0.1


def human_bytes(n: float) -> str:
    """1536 -> '1.5 KiB'."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"  # pragma: no cover


class ProgressBar:
    """Callable as `progress(done, total)`; draws `label [#####.....] 45% 12.0/27.0 MiB 30.1 MiB/s`.

    Silent when `stream` is not a TTY, so pipes, logs and `--json` output
    stay clean.
    """

    def __init__(self, label: str, *, stream: TextIO, unit: str = "bytes") -> None:
        self.label = label
        self.stream = stream
        self.unit = unit
        self.enabled = bool(getattr(stream, "isatty", lambda: False)())
        self._start = time.monotonic()
        self._last_draw = 0.0
        self._drawn = False

    def __call__(self, done: float, total: float) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if done < total and now - self._last_draw < _INTERVAL:
            return
        self._last_draw = now
        fraction = min(1.0, done / total) if total else 1.0
        filled = int(fraction * _WIDTH)
        bar = "#" * filled + "." * (_WIDTH - filled)
        if self.unit == "bytes":
            rate = done / max(now - self._start, 1e-6)
            detail = f"{human_bytes(done)}/{human_bytes(total)} {human_bytes(rate)}/s"
        else:
            detail = f"{done:g}/{total:g} {self.unit}"
        self.stream.write(f"\r{self.label} [{bar}] {fraction:4.0%} {detail}\x1b[K")
        self.stream.flush()
        self._drawn = True

    def close(self) -> None:
        """Ends the bar's line, if one was drawn."""
        if self._drawn:
            self.stream.write("\n")
            self.stream.flush()
            self._drawn = False
