"""The body of `xfer rank DATA --models a,b,c` (the `xfer` CLI owns the parser and the reports).

`add_arguments(parser)` declares the flags; `run(args, client=...)` pulls each
candidate's ONNX artifact only (never its weights), extracts features of the
client's labelled training split with onnxruntime, scores them and returns
a `RankOutcome`, whose `to_runs(run_id=...)` are the reports.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any, TextIO

from xfer.client.rank.errors import RankError
from xfer.client.rank.knn import DEFAULT_K
from xfer.client.rank.outcome import Candidate, RankOutcome
from xfer.client.rank.scores import CRITERIA, score_features

#: Bound on candidates per call: each one is a pull and a pass over the data.
MAX_CANDIDATES = 32


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declares the `xfer rank` flags on `parser`."""
    parser.add_argument("data", help="labelled data: file.npz (x, y), digits[:...] (torch-free), or any "
                                     "`xfer finetune` data spec (needs torch); scored on its training split")
    parser.add_argument("--models", required=True,
                        help="comma-separated candidate references, e.g. a,b@stable,c:2")
    parser.add_argument("--by", choices=CRITERIA, default="logme", help="ranking criterion (default logme)")
    parser.add_argument("--k", type=int, default=DEFAULT_K, help=f"neighbours of the k-NN score (default {DEFAULT_K})")
    parser.add_argument("--batch-size", type=int, default=256, help="feature extraction batch size")
    parser.add_argument("--threads", type=int, default=0, help="onnxruntime CPU threads (0: all)")
    parser.add_argument("--seed", type=int, default=0, help="data split seed (as xfer finetune's)")


def candidates_from(text: str) -> list[str]:
    """The distinct references of `--models`, in order; raises RankError when empty or too many."""
    refs = list(dict.fromkeys(r.strip() for r in text.split(",") if r.strip()))
    if not refs:
        raise RankError("--models needs at least one model reference, e.g. --models a,b,c")
    if len(refs) > MAX_CANDIDATES:
        raise RankError(f"--models lists {len(refs)} candidates; rank at most {MAX_CANDIDATES} per call")
    return refs


def run(args: argparse.Namespace, *, client: Any, progress: bool = False, out: TextIO | None = None) -> RankOutcome:
    """Scores every candidate of `--models` on DATA; prints progress to `out` if asked."""
    from xfer.client.onnxhead.features import FeatureExtractor, SessionOptions
    from xfer.client.rank.data import load_training_split

    out = out if out is not None else sys.stdout
    if args.k < 1:
        raise RankError(f"--k must be at least 1, got {args.k}")
    found = []
    for ref in candidates_from(args.models):
        started = time.perf_counter()
        pulled = client.pull(ref, "onnx")
        card = pulled.model_version.card
        data = load_training_split(args.data, card=card, seed=args.seed)
        extractor = FeatureExtractor(pulled.blob_path, batch_size=args.batch_size,
                                     options=SessionOptions(intra_op_threads=args.threads))
        score = score_features(extractor(data.x), data.y, k=args.k)
        found.append(Candidate(ref=ref, model_version=pulled.model_version.name, score=score,
                               seconds=time.perf_counter() - started, transferred_bytes=pulled.transferred_bytes))
        if progress:
            print(f"  {ref}: LogME {score.logme:.4f}, k-NN accuracy {score.knn_accuracy:.4f} "
                  f"({pulled.transferred_bytes:,} bytes pulled)", file=out, flush=True)
    return RankOutcome(candidates=tuple(found), by=args.by, data=args.data, seed=args.seed)
