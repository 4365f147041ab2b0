"""Where the small-scale results agree with published claims, decided from the numbers.

Every verdict comes from `compare`: a difference of means counts only when
it exceeds twice its standard error; otherwise the two are "within noise".
Nothing is hard-coded but the claims themselves and which comparison tests
each one.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

from report_experiments import ALL_BLOCKS, AUTO, Results, Stat
from report_setup import SOURCES, TARGETS, eps_text, labels_text

AGREES = "agrees"
DISAGREES = "does not agree"
WITHIN_NOISE = "within noise"  # the claimed effect is not visible: the difference is below 2 s.e.
INCONCLUSIVE = "inconclusive"  # one seed: no test possible
VERDICTS = (AGREES, DISAGREES, WITHIN_NOISE, INCONCLUSIVE)

GREATER, LESS, TIE, UNKNOWN = "greater", "less", "tie", "unknown"


def compare(a: Stat, b: Stat) -> str:
    """GREATER / LESS when |mean a − mean b| > 2·s.e. of the difference, TIE otherwise; UNKNOWN with one seed."""
    if a.n < 2 or b.n < 2:
        return UNKNOWN
    diff = a.mean - b.mean
    se = math.sqrt(a.se**2 + b.se**2)
    if abs(diff) > 2 * se and diff != 0:
        return GREATER if diff > 0 else LESS
    return TIE


def _diff(a: Stat, b: Stat) -> str:
    return f"{a.mean - b.mean:+.3f}"


@dataclasses.dataclass(frozen=True)
class Claim:
    section: str
    claim: str
    source: str
    evidence: str
    verdict: str


def _verdict(outcome: str, *, expect: Sequence[str]) -> str:
    """AGREES when the outcome is one the claim predicts; a directional claim ("A beats B") met by a tie is
    WITHIN_NOISE (the effect is not visible), anything else DISAGREES."""
    if outcome == UNKNOWN:
        return INCONCLUSIVE
    if outcome in expect:
        return AGREES
    return WITHIN_NOISE if outcome == TIE else DISAGREES


def _relation(outcome: str) -> str:
    return {
        GREATER: "higher, beyond noise",
        LESS: "lower, beyond noise",
        TIE: "within noise",
        UNKNOWN: "one seed: no test",
    }[outcome]


def block_groups(blocks: Sequence[str]) -> dict[str, list[str]]:
    """Blocks split by depth as Lee et al. name them: early half, later half of the body, and the head."""
    body = list(blocks[:-1])
    half = math.ceil(len(body) / 2)
    return {"input": body[:half], "feature": body[half:], "output": [blocks[-1]]}


PREDICTION = {"input": "an early block", "feature": "a middle/later block", "output": "the head (last layer)"}


def claims(results: Results) -> list[Claim]:
    """Every claim the report tests, with its evidence and verdict."""
    out: list[Claim] = []
    out += _init_claims(results)
    out += _surgical_claims(results)
    out += _strategy_claims(results)
    out += _privacy_claims(results)
    out += _search_claims(results)
    return out


def _init_claims(results: Results) -> list[Claim]:
    out = []
    source = "Huh, Agrawal & Efros 2016 (What makes ImageNet good for transfer learning?: pretrained 58.3 vs random 41.3 mAP)"
    for row in results.init:
        if row.pretrained is None or row.random is None:
            continue
        rel = compare(row.pretrained, row.random)
        out.append(
            Claim(
                "1",
                f"Pretrained initialisation beats random initialisation ({_pair(row.target)}, "
                f"{labels_text(row.per_class)})",
                source,
                f"fine-tuned {row.pretrained.fmt()} vs random {row.random.fmt()} ({_diff(row.pretrained, row.random)}, "
                f"{_relation(rel)})",
                _verdict(rel, expect=(GREATER,)),
            )
        )
    by_target: dict[str, list] = {}
    for row in results.init:
        if row.pretrained is not None and row.random is not None:
            by_target.setdefault(row.target, []).append(row)
    for target, rows in by_target.items():
        if len(rows) < 2:
            continue
        fewest = min(rows, key=lambda r: r.train_examples)
        most = max(rows, key=lambda r: r.train_examples)
        gap_few = Stat(tuple(p - r for p, r in zip(fewest.pretrained.values, fewest.random.values, strict=True)))
        gap_many = Stat(tuple(p - r for p, r in zip(most.pretrained.values, most.random.values, strict=True)))
        rel = compare(gap_few, gap_many)
        out.append(
            Claim(
                "1",
                f"The benefit of pretraining shrinks as labels grow ({_pair(target)})",
                "He, Girshick & Dollár 2019 (Rethinking ImageNet pre-training)",
                f"gap {gap_few.fmt()} at {labels_text(fewest.per_class)} vs {gap_many.fmt()} at "
                f"{labels_text(most.per_class)} ({_relation(rel)})",
                _verdict(rel, expect=(GREATER,)),
            )
        )
    return out


def _pair(target: str) -> str:
    """'Fashion 0-4 convnet → mnist5k'."""
    return f"{SOURCES[TARGETS[target].source].short} → {TARGETS[target].data}"


def _surgical_claims(results: Results) -> list[Claim]:
    out = []
    source = "Lee et al., ICLR 2023 (Surgical fine-tuning)"
    targets = list(dict.fromkeys(r.target for r in results.surgical))
    for target in targets:
        level = TARGETS[target].level
        rows = {r.tuned: r.accuracy for r in results.surgical if r.target == target}
        blocks = results.blocks[target]
        predicted = block_groups(blocks)[level]
        singles = {b: rows[b] for b in blocks}
        best_block = max(singles, key=lambda b: singles[b].mean)
        best_predicted = max(predicted, key=lambda b: singles[b].mean)
        if best_block in predicted:
            rel = TIE if singles[best_block].n >= 2 else UNKNOWN
            verdict = AGREES if rel != UNKNOWN else INCONCLUSIVE
            evidence = f"best single block is {best_block} ({singles[best_block].fmt()}), which is {PREDICTION[level]}"
        else:
            rel = compare(singles[best_predicted], singles[best_block])
            verdict = _verdict(rel, expect=(TIE, GREATER))
            which = (
                f"the predicted block {best_predicted}"
                if len(predicted) == 1
                else f"the best predicted block ({', '.join(predicted)}) is {best_predicted}"
            )
            evidence = (
                f"best single block is {best_block} ({singles[best_block].fmt()}); {which} at "
                f"{singles[best_predicted].fmt()} ({_relation(rel)})"
            )
        article = "an" if level[0] in "aeiou" else "a"
        out.append(
            Claim(
                "2",
                f"For {article} {level}-level shift, tuning {PREDICTION[level]} works best",
                source,
                evidence,
                verdict,
            )
        )
        rel = compare(singles[best_block], rows[ALL_BLOCKS])
        out.append(
            Claim(
                "2",
                f"Tuning one block matches or beats tuning all blocks ({level}-level shift)",
                source,
                f"best single block {best_block} {singles[best_block].fmt()} vs all blocks {rows[ALL_BLOCKS].fmt()} "
                f"({_relation(rel)}; the best block is picked in hindsight, as in the paper's per-block tables)",
                _verdict(rel, expect=(GREATER, TIE)),
            )
        )
        rel = compare(rows[AUTO], singles[best_block])
        scales = {r.block: r.scale.mean for r in results.rgn if r.target == target}
        favoured = max(scales, key=scales.get) if scales else "n/a"
        out.append(
            Claim(
                "2",
                f"Auto-RGN comes close to the best single block without being told which ({level}-level shift)",
                source,
                f"surgical:auto {rows[AUTO].fmt()} vs best block {best_block} {singles[best_block].fmt()} "
                f"({_relation(rel)}); its LR scales favour {favoured}"
                + (f" ({'in' if favoured in predicted else 'not in'} the predicted group)" if scales else ""),
                _verdict(rel, expect=(GREATER, TIE)),
            )
        )
    return out


def _strategy_claims(results: Results) -> list[Claim]:
    out = []
    targets = list(dict.fromkeys(r.target for r in results.strategies))
    for target in targets:
        rows = {r.strategy: r.accuracy for r in results.strategies if r.target == target}
        level = TARGETS[target].level
        if "lp-ft" in rows and "full" in rows:
            rel = compare(rows["lp-ft"], rows["full"])
            out.append(
                Claim(
                    "3",
                    f"LP-FT matches or beats full fine-tuning ({level}-level target)",
                    "Kumar et al., ICLR 2022 (Fine-tuning can distort pretrained features)",
                    f"lp-ft {rows['lp-ft'].fmt()} vs full {rows['full'].fmt()} ({_relation(rel)})",
                    _verdict(rel, expect=(GREATER, TIE)),
                )
            )
        for name in ("discriminative", "gradual-unfreeze"):
            if name in rows and "full" in rows:
                rel = compare(rows[name], rows["full"])
                out.append(
                    Claim(
                        "3",
                        f"{name} matches or beats full fine-tuning on a small target ({level}-level target)",
                        "Howard & Ruder 2018 (ULMFiT)",
                        f"{name} {rows[name].fmt()} vs full {rows['full'].fmt()} ({_relation(rel)})",
                        _verdict(rel, expect=(GREATER, TIE)),
                    )
                )
    return out


def _privacy_claims(results: Results) -> list[Claim]:
    out = []
    source = "Tramèr & Boneh, ICLR 2021 (Differentially private learning needs better features)"
    random_rows = {r.epsilon: r for r in results.privacy if r.init == "random"}
    for row in results.privacy:
        if row.init == "random" or row.epsilon is None or row.epsilon not in random_rows:
            continue
        base = random_rows[row.epsilon]
        rel = compare(row.accuracy, base.accuracy)
        out.append(
            Claim(
                "4",
                f"With DP, fine-tuning pretrained features beats training from random init "
                f"({row.arm} vs {base.arm}, {eps_text(row.epsilon)})",
                source,
                f"{row.accuracy.fmt()} vs {base.accuracy.fmt()} ({_diff(row.accuracy, base.accuracy)}, "
                f"{_relation(rel)})",
                _verdict(rel, expect=(GREATER,)),
            )
        )
    dp_eps = sorted(e for e in random_rows if e is not None)
    if dp_eps and None in random_rows:
        tightest = dp_eps[0]
        for arm in dict.fromkeys(r.arm for r in results.privacy if r.init != "random"):
            rows = {r.epsilon: r for r in results.privacy if r.arm == arm}
            if tightest not in rows or None not in rows:
                continue
            gap_dp = Stat(
                tuple(
                    a - b
                    for a, b in zip(rows[tightest].accuracy.values, random_rows[tightest].accuracy.values, strict=True)
                )
            )
            gap_free = Stat(
                tuple(a - b for a, b in zip(rows[None].accuracy.values, random_rows[None].accuracy.values, strict=True))
            )
            rel = compare(gap_dp, gap_free)
            out.append(
                Claim(
                    "4",
                    f"Good features matter more under privacy: the gap over random init is larger at "
                    f"{eps_text(tightest)} than without DP ({arm})",
                    source,
                    f"gap {gap_dp.fmt()} at {eps_text(tightest)} vs {gap_free.fmt()} without DP ({_relation(rel)})",
                    _verdict(rel, expect=(GREATER,)),
                )
            )
    return out


def _search_claims(results: Results) -> list[Claim]:
    out = []
    for row in results.search:
        rel = compare(row.cv_pick, row.hindsight_accuracy)
        out.append(
            Claim(
                "5",
                f"k-fold cross-validation on the training split picks a configuration as good as the best "
                f"fixed choice in hindsight ({TARGETS[row.target].level}-level target)",
                "Kohavi 1995 (cross-validation for model selection)",
                f"CV pick {row.cv_pick.fmt()} vs hindsight best {row.hindsight} {row.hindsight_accuracy.fmt()} "
                f"({_relation(rel)})",
                _verdict(rel, expect=(GREATER, TIE)),
            )
        )
    return out
