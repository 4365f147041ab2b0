"""How an audit runs: one frozen config, plain data (no torch)."""

from __future__ import annotations

import dataclasses

#: FPRs at which the TPR is reported: 1 % and 0.1 %.
DEFAULT_FPRS = (0.01, 0.001)


@dataclasses.dataclass(frozen=True)
class AuditConfig:
    """How an audit runs."""

    #: Pairs of reference models for RMIA (each pair splits the pool in two disjoint halves); 0: loss attack only.
    reference_pairs: int = 1
    fprs: tuple[float, ...] = DEFAULT_FPRS
    confidence: float = 0.95
    #: RMIA's offline scaling of Pr(x) from out-models only (their paper tunes it per data set; 0.3 is its default).
    rmia_a: float = 0.3
    #: Evaluate at most this many members (a random subset; None: all). Non-members are always all used.
    max_members: int | None = None
    #: Canaries of the DP audit (None: a fifth of the training set, at most 1000); only for DP training.
    canaries: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.reference_pairs < 0:
            raise ValueError(f"reference_pairs must be >= 0, got {self.reference_pairs}")
        if not self.fprs or not all(0 < f < 1 for f in self.fprs):
            raise ValueError(f"fprs must be in (0, 1), got {self.fprs}")
        if not 0 < self.confidence < 1:
            raise ValueError(f"confidence must be in (0, 1), got {self.confidence}")
        if not 0 <= self.rmia_a <= 1:
            raise ValueError(f"rmia_a must be in [0, 1], got {self.rmia_a}")
        if self.max_members is not None and self.max_members < 1:
            raise ValueError(f"max_members must be positive, got {self.max_members}")
        if self.canaries is not None and self.canaries < 2:
            raise ValueError(f"canaries must be at least 2, got {self.canaries}")
