"""The transfer report's helper modules live in bench/ (a folder of scripts, not a package).

Appended, not prepended, to sys.path: bench/ also holds finetune.py and pull.py, which must never shadow
anything another test imports.
"""

from __future__ import annotations

import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench"
if str(BENCH) not in sys.path:
    sys.path.append(str(BENCH))
