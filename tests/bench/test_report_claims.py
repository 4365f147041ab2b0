"""The report's verdicts come from the numbers: the same claim flips when the numbers do."""

from __future__ import annotations

import pytest
from report_claims import (
    AGREES,
    DISAGREES,
    GREATER,
    INCONCLUSIVE,
    LESS,
    TIE,
    UNKNOWN,
    WITHIN_NOISE,
    block_groups,
    claims,
    compare,
)
from report_experiments import (
    ALL_BLOCKS,
    AUTO,
    InitRow,
    PrivacyRow,
    Results,
    RGNRow,
    SearchRow,
    Stat,
    StrategyRow,
    SurgicalRow,
)
from report_render import table
from report_setup import SOURCES, TARGETS, Settings, epochs_for

BLOCKS = ["stem", "block1", "block2", "block3", "head"]


def s(*values: float) -> Stat:
    return Stat(tuple(values))


def test_compare_needs_a_difference_beyond_twice_the_standard_error() -> None:
    assert compare(s(0.9, 0.91, 0.92), s(0.5, 0.51, 0.52)) == GREATER
    assert compare(s(0.5, 0.51, 0.52), s(0.9, 0.91, 0.92)) == LESS
    assert compare(s(0.80, 0.90, 0.70), s(0.81, 0.71, 0.91)) == TIE
    assert compare(s(0.9), s(0.1)) == UNKNOWN  # one seed: no test


def test_block_groups_split_the_body_and_keep_the_head() -> None:
    assert block_groups(BLOCKS) == {"input": ["stem", "block1"], "feature": ["block2", "block3"], "output": ["head"]}


def test_epochs_give_the_step_budget() -> None:
    assert epochs_for(25, batch_size=32, steps=200) == 200
    assert epochs_for(200, batch_size=32, steps=200) == 29
    assert epochs_for(10_000, batch_size=32, steps=200) == 1


def test_table_escapes_pipes() -> None:
    assert table(["a", "b"], [["x|y", "1"]]).splitlines() == ["| a | b |", "| --- | --- |", "| x\\|y | 1 |"]


def _results(*, pretrained: Stat, random: Stat, early: Stat, late: Stat) -> Results:
    surgical = [SurgicalRow("input", b, early if b in ("stem", "block1") else late) for b in BLOCKS]
    surgical += [SurgicalRow("input", ALL_BLOCKS, s(0.8, 0.8, 0.8)), SurgicalRow("input", AUTO, s(0.8, 0.8, 0.8))]
    return Results(
        init=[
            InitRow("feature", 5, 25, pretrained, pretrained, random),
            InitRow("feature-imagenet", None, 3000, pretrained, None, None),
        ],
        surgical=surgical,
        rgn=[RGNRow("input", b, s(1.0, 1.0, 1.0) if b == "stem" else s(0.1, 0.1, 0.1)) for b in BLOCKS],
        strategies=[StrategyRow("input", "full", s(0.8, 0.8, 0.8)), StrategyRow("input", "lp-ft", s(0.8, 0.8, 0.8))],
        privacy=[
            PrivacyRow("pretrained + linear-probe", "pretrained", "linear-probe", 1.0, pretrained, s(1, 1, 1)),
            PrivacyRow("random + full", "random", "full", 1.0, random, s(1, 1, 1)),
        ],
        search=[
            SearchRow(
                "input",
                ("full@0.001",) * 3,
                s(0.8, 0.8, 0.8),
                "full@0.001",
                s(0.8, 0.8, 0.8),
                s(0.8, 0.8, 0.8),
                "lp-ft",
            )
        ],
        blocks={"input": BLOCKS, "feature": BLOCKS, "output": BLOCKS},
    )


def _verdict(results: Results, prefix: str) -> str:
    matches = [c.verdict for c in claims(results) if c.claim.startswith(prefix)]
    assert matches, prefix
    return matches[0]


@pytest.mark.parametrize("flip", [False, True])
def test_verdicts_follow_the_numbers(flip: bool) -> None:
    good, bad = s(0.9, 0.92, 0.91), s(0.5, 0.52, 0.51)
    results = _results(
        pretrained=bad if flip else good,
        random=good if flip else bad,
        early=bad if flip else good,
        late=good if flip else bad,
    )
    expected = DISAGREES if flip else AGREES
    assert _verdict(results, "Pretrained initialisation beats random") == expected
    assert _verdict(results, "For an input-level shift") == expected
    assert _verdict(results, "With DP, fine-tuning pretrained features") == expected
    assert _verdict(results, "LP-FT matches or beats") == AGREES  # equal means: within noise


def test_a_directional_claim_met_by_a_tie_is_within_noise() -> None:
    same = s(0.80, 0.90, 0.70)
    results = _results(pretrained=same, random=s(0.81, 0.71, 0.91), early=same, late=same)
    assert _verdict(results, "Pretrained initialisation beats random") == WITHIN_NOISE


def test_one_seed_is_inconclusive() -> None:
    results = _results(pretrained=s(0.9), random=s(0.1), early=s(0.9), late=s(0.1))
    assert {c.verdict for c in claims(results) if c.section in ("1", "4")} == {INCONCLUSIVE}


def test_quick_preset_keeps_every_section() -> None:
    quick = Settings.quick_preset()
    assert quick.quick and len(quick.seeds) == 1
    assert quick.init_targets and quick.surgical_targets and quick.strategy_targets and quick.search_targets
    assert None in quick.epsilons and len(quick.epsilons) >= 2
    full = Settings.full()
    assert len(full.seeds) >= 3 and full.epsilons == (1.0, 2.0, 4.0, 8.0, None)
    assert full.few_labels == (1, 5, 20, None)
    # Section 1 adapts a Fashion source and the ImageNet source to the same two targets.
    assert {TARGETS[t].data for t in full.init_targets} == {"fashion-mnist:classes=5-9", "mnist5k"}
    assert {SOURCES[TARGETS[t].source].kind for t in full.init_targets} == {"train", "import"}


def test_rows_without_fine_tuning_make_no_init_claim() -> None:
    results = _results(
        pretrained=s(0.9, 0.92, 0.91), random=s(0.5, 0.52, 0.51), early=s(0.8, 0.8, 0.8), late=s(0.8, 0.8, 0.8)
    )
    init_claims = [c for c in claims(results) if c.section == "1"]
    assert len(init_claims) == 1 and "Fashion 0-4 convnet → fashion-mnist:classes=5-9" in init_claims[0].claim
