"""The body of `xfer rank DATA --models a,b,c` (the `xfer` CLI owns the parser and the reports).

`add_arguments(parser)` declares the flags; `rank_candidates(client, data=...,
models=[...])` (the SDK entry point; `run(args, client=...)` for the CLI) pulls
each candidate's ONNX artifact only (never its weights), extracts features of
the client's labelled training split with onnxruntime, scores them and
returns a `RankOutcome`, whose `to_runs(run_id=...)` are the reports.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, TextIO

from xfer.client.rank.errors import RankError
from xfer.client.rank.knn import DEFAULT_K
from xfer.client.rank.outcome import Candidate, RankOutcome
from xfer.client.rank.scores import CRITERIA, score_features
from xfer.client.seeds import seed_argument

#: Bound on candidates per call: each one is a pull and a pass over the data.
MAX_CANDIDATES = 32


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declares the `xfer rank` flags on `parser`."""
    parser.add_argument(
        "data",
        help="labelled data, any `xfer finetune` data spec (e.g. fashion-mnist:classes=5-9, "
        "data.npz, data.csv, a folder); scored on its training split",
    )
    parser.add_argument("--models", required=True, help="comma-separated candidate references, e.g. a,b@stable,c:2")
    parser.add_argument("--by", choices=CRITERIA, default="logme", help="ranking criterion (default logme)")
    parser.add_argument("--k", type=int, default=DEFAULT_K, help=f"neighbours of the k-NN score (default {DEFAULT_K})")
    parser.add_argument("--batch-size", type=int, default=256, help="feature extraction batch size")
    parser.add_argument("--threads", type=int, default=0, help="onnxruntime CPU threads (0: all)")
    parser.add_argument("--seed", type=seed_argument, default=0, help="data split seed (as xfer finetune's)")


def candidates_from(text: str) -> list[str]:
    """The distinct references of `--models`, in order; raises RankError when empty or too many."""
    refs = list(dict.fromkeys(r.strip() for r in text.split(",") if r.strip()))
    if not refs:
        raise RankError("--models needs at least one model reference, e.g. --models a,b,c")
    if len(refs) > MAX_CANDIDATES:
        raise RankError(f"--models lists {len(refs)} candidates; rank at most {MAX_CANDIDATES} per call")
    return refs


def rank_candidates(
    client: Any,
    *,
    data: str,
    models: Sequence[str],
    by: str = "logme",
    k: int = DEFAULT_K,
    batch_size: int = 256,
    threads: int = 0,
    seed: int = 0,
    on_candidate: Callable[[Candidate], None] | None = None,
) -> RankOutcome:
    """Scores every candidate of `models` on the labelled training split of `data`, ranked by `by`.

    For each candidate only its ONNX artifact is pulled through `client` (an `xfer.client.Client`), never
    its weights; `on_candidate` is called as each is scored. Nothing is reported here: the outcome's
    `to_runs(run_id=...)` are the reports, scores and settings only.
    """
    from xfer.client.onnxhead.features import FeatureExtractor, SessionOptions
    from xfer.client.rank.data import load_training_split

    if by not in CRITERIA:
        raise RankError(f"unknown ranking criterion {by!r}; valid: {', '.join(CRITERIA)}")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise RankError(f"k must be a whole number >= 1, got {k!r}")
    if batch_size < 1:
        raise RankError(f"batch_size must be positive, got {batch_size}")
    options = SessionOptions(intra_op_threads=threads)  # checked here, before anything is pulled
    found = []
    for ref in candidates_from(",".join(models)):
        started = time.perf_counter()
        pulled = client.pull(ref, "onnx")
        card = pulled.model_version.card
        labelled = load_training_split(data, card=card, seed=seed)
        extractor = FeatureExtractor(pulled.blob_path, batch_size=batch_size, options=options)
        score = score_features(extractor(labelled.x), labelled.y, k=k)
        candidate = Candidate(
            ref=ref,
            model_version=pulled.model_version.name,
            score=score,
            seconds=time.perf_counter() - started,
            transferred_bytes=pulled.transferred_bytes,
        )
        found.append(candidate)
        if on_candidate is not None:
            on_candidate(candidate)
    return RankOutcome(candidates=tuple(found), by=by, data=data, seed=seed)


def run(args: argparse.Namespace, *, client: Any, progress: bool = False, out: TextIO | None = None) -> RankOutcome:
    """`rank_candidates` with the flags of `add_arguments`; prints progress to `out` if asked."""
    stream = out if out is not None else sys.stdout

    def show(c: Candidate) -> None:
        if progress:
            print(
                f"  {c.ref}: LogME {c.score.logme:.4f}, k-NN accuracy {c.score.knn_accuracy:.4f} "
                f"({c.transferred_bytes:,} bytes pulled)",
                file=stream,
                flush=True,
            )

    return rank_candidates(
        client,
        data=args.data,
        models=candidates_from(args.models),
        by=args.by,
        k=args.k,
        batch_size=args.batch_size,
        threads=args.threads,
        seed=args.seed,
        on_candidate=show,
    )
