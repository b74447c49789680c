"""The verdict rule (``resnet.reporting.verdicts``) and every report's verdict function: numbers that agree,
disagree and lie within the noise give the three answers, and inverting the inputs inverts the answer. Pure
arithmetic on made-up numbers, plus the checked-in reports' verdicts against their own metrics.json: no training."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from resnet.experiments.cifar import degradation_verdicts, depth_verdicts
from resnet.experiments.shortcuts import shortcut_order, shortcut_verdicts
from resnet.experiments.gradients import evenness
from resnet.experiments.landscape import comparison
from resnet.experiments.lesion import lesion_verdicts
from resnet.experiments.responses import render_responses, response_verdicts
from resnet.reporting.stats import binomial_two_sided_p, t_two_sided_p, welch
from resnet.reporting.verdicts import (AGREES, DISAGREES, NOT_SEPARABLE, Sample, combine, compare, compare_ratio,
                                       majority, ordering, seed_spread)
from resnet.runs.spec import Options

INVERT = {AGREES: DISAGREES, DISAGREES: AGREES, NOT_SEPARABLE: NOT_SEPARABLE}
SPREAD = seed_spread("resnet20", "short")  # 1.32 points: one-seed threshold 2.64
ROOT = Path(__file__).resolve().parents[1]


def answers(verdicts) -> list[str]:
    return [v.answer for v in verdicts if v.answer != "not tested here"]


# ---------------------------------------------------------------------------------------------------------------------
# The statistics


def test_student_t_and_binomial_against_known_values():
    assert t_two_sided_p(2.0, 10) == pytest.approx(0.07339, abs=1e-5)  # tables: t = 2, df = 10
    assert t_two_sided_p(1.0, 1) == pytest.approx(0.5, abs=1e-12)  # Cauchy
    assert t_two_sided_p(0.0, 5) == pytest.approx(1.0)
    w = welch([33.36, 34.52, 33.20], [32.52, 33.28, 33.08])  # docs/speed.md: bf16 vs fp32, "Welch's t is 1.55"
    assert w.t == pytest.approx(1.547, abs=1e-3) and 0.15 < w.p < 0.3
    assert binomial_two_sided_p(16, 18) == pytest.approx(2 * (1 + 18 + 153) / 2 ** 18)
    assert binomial_two_sided_p(5, 10) == 1.0


def test_seed_spread_is_the_measured_one():
    assert SPREAD.points == pytest.approx(34.52 - 33.20)
    assert "docs/speed.md" in SPREAD.where
    assert "not measured for ResNet-56 at `medium`" in seed_spread("resnet56", "medium").describe(["resnet56"], "medium")
    # ResNet-20 at fast-32k: its own two seeds (11.06 / 10.96%); ResNet-56 there borrows it, named as a stand-in
    at_fast = seed_spread("resnet20", "fast-32k")
    assert at_fast.points == pytest.approx(11.06 - 10.96) and at_fast.measured_for == ("resnet20", "fast-32k")
    assert seed_spread("resnet56", "fast-32k") is at_fast
    assert "not measured for ResNet-56 at `fast-32k`" in at_fast.describe(["resnet20", "resnet56"], "fast-32k")
    assert seed_spread("resnet20", "medium") is SPREAD  # the same net at another budget comes first


# ---------------------------------------------------------------------------------------------------------------------
# The rule: one seed against the measured spread, several seeds with Welch's test


@pytest.mark.parametrize("low, high, expected", [
    (16.43, 55.66, AGREES),  # a 34-point gap on one seed is evidence
    (55.66, 16.43, DISAGREES),
    (16.43, 17.27, NOT_SEPARABLE),  # a 0.84-point gap on one seed is not
    (17.27, 16.43, NOT_SEPARABLE),
    (30.0, 32.6, NOT_SEPARABLE),  # just within 2 x 1.32
    (30.0, 32.7, AGREES),  # just beyond
])
def test_one_seed_difference_must_exceed_twice_the_measured_spread(low, high, expected):
    f = compare(Sample("a", low), Sample("b", high), SPREAD)
    assert f.answer == expected and "(1 seed)" in f.evidence
    assert compare(Sample("b", high), Sample("a", low), SPREAD).answer == INVERT[expected]


@pytest.mark.parametrize("low, high, expected", [
    ([16.1, 16.3, 16.2], [17.4, 17.2, 17.3], AGREES),  # 1 point apart, tight seeds: separable with 3 seeds
    ([17.4, 17.2, 17.3], [16.1, 16.3, 16.2], DISAGREES),
    ([15.0, 17.5, 16.2], [16.0, 18.4, 15.4], NOT_SEPARABLE),  # overlapping seeds
])
def test_several_seeds_use_welch(low, high, expected):
    f = compare(Sample("a", low), Sample("b", high))  # no spread needed
    assert f.answer == expected and "(3 seeds)" in f.evidence and "Welch" in f.evidence
    assert compare(Sample("b", high), Sample("a", low)).answer == INVERT[expected]


def test_one_seed_needs_a_spread():
    with pytest.raises(ValueError):
        compare(Sample("a", 1.0), Sample("b", 2.0))


@pytest.mark.parametrize("values, expected", [
    ([30.0, 33.0, 36.0, 40.0], AGREES),  # rising beyond the noise at the ends, no pair against
    ([40.0, 36.0, 33.0, 30.0], DISAGREES),
    ([33.0, 33.5, 34.0, 34.5], NOT_SEPARABLE),  # every pair within 2.64
])
def test_ordering_uses_every_pair(values, expected):
    samples = [Sample(f"n{i}", v) for i, v in enumerate(values)]
    o = ordering(samples, SPREAD)
    assert o.answer == expected
    assert ordering([Sample(s.label, -s.values[0]) for s in samples], SPREAD).answer == INVERT[expected]
    assert ordering(samples[::-1], SPREAD).answer == INVERT[expected]


def test_ordering_is_refuted_by_any_pair_not_only_the_ends():
    # the ends agree (30 < 40), but the middle pair is separably reversed (38 > 33): a monotone claim fails
    o = ordering([Sample("a", 30.0), Sample("b", 38.0), Sample("c", 33.0), Sample("d", 40.0)], SPREAD)
    assert o.answer == DISAGREES and "b vs c" in o.evidence


@pytest.mark.parametrize("low, high, expected", [(1.0, 3.0, AGREES), (3.0, 1.0, DISAGREES), (1.0, 1.5, NOT_SEPARABLE)])
def test_ratio_rule(low, high, expected):
    assert compare_ratio(Sample("a", low), Sample("b", high)).answer == expected
    assert compare_ratio(Sample("b", high), Sample("a", low)).answer == INVERT[expected]


@pytest.mark.parametrize("count, total, expected", [(21, 27, AGREES), (1, 9, DISAGREES), (5, 9, NOT_SEPARABLE)])
def test_majority_rule(count, total, expected):
    assert majority(count, total, "cases").answer == expected
    assert majority(total - count, total, "cases").answer == INVERT[expected]


def test_combine():
    from resnet.reporting.verdicts import Finding

    a, d, n = Finding(AGREES, ""), Finding(DISAGREES, ""), Finding(NOT_SEPARABLE, "")
    assert combine([a, n]) == AGREES and combine([d, n]) == DISAGREES
    assert combine([a, d]) == NOT_SEPARABLE and combine([n, n]) == NOT_SEPARABLE


# ---------------------------------------------------------------------------------------------------------------------
# Each report's verdict function


def depth_metrics(errors: dict[int, list[float]]) -> dict:
    return {f"resnet{d}": {"val_error": e} for d, e in errors.items()}


@pytest.mark.parametrize("errors, expected", [
    ({20: [19.0], 32: [17.0], 56: [15.5]}, AGREES),
    ({20: [15.5], 32: [17.0], 56: [19.0]}, DISAGREES),
    ({20: [19.08], 56: [17.86]}, NOT_SEPARABLE),  # the medium-budget report's numbers: 1.22 points, one seed
])
def test_depth_verdict(errors, expected):
    opts = Options("cifar-depth", budget="medium")
    depths = sorted(errors)
    assert answers(depth_verdicts(opts, depth_metrics(errors), depths)) == [expected]
    inverted = {d: [-e for e in v] for d, v in errors.items()}
    assert answers(depth_verdicts(opts, depth_metrics(inverted), depths)) == [INVERT[expected]]


def test_depth_verdict_states_seeds_and_untested_parts():
    vs = depth_verdicts(Options("cifar-depth", budget="short", seeds=2),
                        depth_metrics({20: [33.0, 33.4], 56: [30.0, 30.2]}), [20, 56])
    assert "2 seed(s) each" in vs[0].claim and "(2 seeds)" in vs[0].evidence and vs[0].answer == AGREES
    assert [v.answer for v in vs[1:]] == ["not tested here"] * 2  # ResNet-1202 vs 110; the paper's levels


def degradation_metrics(plain: list[float], resnet: list[float], depths=(20, 56)) -> dict:
    m = {}
    for fam, errs in (("plain", plain), ("ResNet", resnet)):
        for d, e in zip(depths, errs):
            m[f"{fam}{d}"] = {"final_train_error": [e], "final_val_error": [e + 1.0]}
    return m


def test_degradation_verdicts_three_ways_and_inverted():
    opts = Options("cifar-degradation", budget="medium")
    # the medium report: plain 21.77 -> 55.66 (agrees), ResNet 17.27 -> 16.43 (within the noise)
    got = answers(degradation_verdicts(opts, degradation_metrics([21.77, 55.66], [17.27, 16.43]), [20, 56]))
    assert got == [AGREES, AGREES, NOT_SEPARABLE, NOT_SEPARABLE, AGREES, AGREES]
    # both families the wrong way round, and the ResNets worse than the plain nets
    got = answers(degradation_verdicts(opts, degradation_metrics([55.66, 21.77], [60.0, 70.0]), [20, 56]))
    assert got == [DISAGREES, DISAGREES, DISAGREES, DISAGREES, DISAGREES, DISAGREES]


def shortcut_metrics(a, b, c, d=20) -> dict:
    return {f"resnet{d}-{o}": {"val_error": v if isinstance(v, list) else [v]} for o, v in zip("ABC", (a, b, c))}


@pytest.mark.parametrize("a, b, c, expected", [
    (36.0, 33.0, 30.0, [AGREES, AGREES, AGREES]),
    (30.0, 33.0, 36.0, [DISAGREES, DISAGREES, DISAGREES]),
    (33.36, 32.86, 34.26, [NOT_SEPARABLE] * 3),  # the checked-in short-budget numbers
])
def test_shortcut_verdicts(a, b, c, expected):
    opts = Options("cifar-shortcuts", budget="short")
    assert answers(shortcut_verdicts(opts, shortcut_metrics(a, b, c), [20])) == expected
    assert answers(shortcut_verdicts(opts, shortcut_metrics(-a, -b, -c), [20])) == [INVERT[e] for e in expected]


def test_shortcut_order_lists_options_by_mean_error_with_seed_count():
    line = shortcut_order(20, {"A": [33.36], "B": [32.86], "C": [34.26]})
    assert "B < A < C" in line and "the paper's ImageNet order is C < B < A" in line and "1 seed(s)" in line
    line = shortcut_order(56, {"A": [36.0, 35.0], "B": [34.0, 34.5], "C": [33.0, 32.0]})
    assert "C < B < A (the paper's order)" in line and "2 seed(s)" in line


LAYERS = 18


def layers(level: float, step: float = 0.01) -> list[float]:
    return [level + step * ((i % 5) - 2) for i in range(LAYERS)]


@pytest.mark.parametrize("stds, expected", [
    # ResNets below their plain twins, and the deeper ResNet lower still: both parts agree
    ({"plain-20": layers(0.95), "ResNet-20": layers(0.85), "plain-56": layers(0.99), "ResNet-56": layers(0.75)},
     [AGREES, AGREES, AGREES]),
    # the first part agrees, the second is contradicted (as in the checked-in report)
    ({"plain-20": layers(0.95), "ResNet-20": layers(0.85), "plain-56": layers(0.99), "ResNet-56": layers(0.92)},
     [AGREES, AGREES, DISAGREES]),
    # everything within the layer-to-layer spread
    ({"plain-20": layers(0.9, 0.2), "ResNet-20": layers(0.89, 0.2), "plain-56": layers(0.9, 0.2),
      "ResNet-56": layers(0.91, 0.2)}, [NOT_SEPARABLE] * 3),
])
def test_response_verdicts_test_both_parts_of_fig7(stds, expected):
    assert answers(response_verdicts(stds, (20, 56))) == expected
    inverted = {k: [-v for v in vals] for k, vals in stds.items()}
    assert answers(response_verdicts(inverted, (20, 56))) == [INVERT[e] for e in expected]


def test_response_table_shows_the_true_median():
    metrics = {"plain-20": {"std": [1.0, 2.0, 3.0, 10.0], "val_error": 40.0},
               "ResNet-20": {"std": [1.0, 2.0, 4.0, 5.0], "val_error": 30.0}}
    body = "\n".join(render_responses(Options("layer-responses", budget="smoke", depths=(20,)), metrics,
                                      {"images": 8, "analysis_precision": "fp32"}))
    assert "| plain-20 | 4 | 4.000 | 10.000 | 2.500 |" in body  # median of 1, 2, 3, 10 is 2.5 (not the upper 3)
    assert "| ResNet-20 | 4 | 3.000 | 5.000 | 3.000 |" in body


def lesion_curves(resnet_errors, plain_errors, intact=(35.0, 60.0)) -> dict:
    return {"ResNet-56": {"intact": intact[0], "errors": resnet_errors},
            "plain-56": {"intact": intact[1], "errors": plain_errors}}


def test_lesion_verdicts():
    graceful = [36.0, 37.0, 38.0, 36.5, 37.5, 39.0, 36.0, 60.0, 37.0, 38.0, 36.0, 37.0]
    collapse = [88.0, 90.0, 91.0, None, 89.0, 87.0, 92.0, 90.0, 88.0, 89.0, 91.0, 90.0]
    assert answers(lesion_verdicts(lesion_curves(graceful, collapse), (56,))) == [AGREES, AGREES, AGREES]
    # the roles swapped: the ResNet collapses and the plain net shrugs
    swapped = lesion_curves([e + 50 for e in graceful], [e - 25 if e else None for e in collapse])
    assert answers(lesion_verdicts(swapped, (56,))) == [DISAGREES, DISAGREES, DISAGREES]
    # costs half above, half below the thresholds, equal on average: nothing separable
    mixed = [30.0 + (12 if i % 2 else 8) for i in range(12)]
    half = [85.0 if i % 2 else 75.0 for i in range(12)]
    assert answers(lesion_verdicts(lesion_curves(mixed, half, intact=(30.0, 70.0)), (56,))) == [NOT_SEPARABLE] * 3


def norms(spread_decades: float, n: int = 20) -> list[float]:
    return [10 ** (spread_decades * ((i % 7) - 3) / 3) for i in range(n)]


@pytest.mark.parametrize("plain, resnet, expected", [
    (norms(1.0), norms(0.2), AGREES),  # the plain net's norms span two decades, the ResNet's less than half of one
    (norms(0.2), norms(1.0), DISAGREES),
    (norms(0.5), norms(0.5)[::-1], NOT_SEPARABLE),
])
def test_gradient_evenness(plain, resnet, expected):
    v = evenness(56, {"0": plain, "119": plain}, {"0": resnet, "119": resnet})  # keys as metrics.json has them
    assert v.answer == expected and "iteration 119" in v.claim  # the last record, read as a number
    assert evenness(56, {0: resnet, 119: resnet}, {0: plain, 119: plain}).answer == INVERT[expected]


def landscape(rise_1d: float, rise_2d: float) -> dict:
    return {"alphas_1d": [-1.0, -0.5, 0.0, 0.5, 1.0], "loss_1d": [9.0, 1.0 + rise_1d, 1.0, 1.0, 9.0],
            "alphas_2d": [-1.0, 0.0, 1.0], "loss_2d": [[1.0, 1.0, 1.0], [1.0, 1.0, 1.0 + rise_2d], [1.0] * 3],
            "loss_at_weights": 1.0}


@pytest.mark.parametrize("plain, resnet, expected", [
    ((5.0, 50.0), (1.0, 10.0), AGREES),
    ((5.0, 50.0), (1.0, 60.0), AGREES),  # one measure agrees, the other within the margin
    ((1.0, 10.0), (5.0, 50.0), DISAGREES),
    ((5.0, 10.0), (1.0, 50.0), NOT_SEPARABLE),  # the two measures contradict each other
    ((5.0, 50.0), (4.0, 40.0), NOT_SEPARABLE),
])
def test_landscape_verdict(plain, resnet, expected):
    results = {"plain-56": landscape(*plain), "ResNet-56": landscape(*resnet)}
    assert comparison(results, 56).answer == expected
    swapped = {"plain-56": landscape(*resnet), "ResNet-56": landscape(*plain)}
    assert comparison(swapped, 56).answer == INVERT[expected]


# ---------------------------------------------------------------------------------------------------------------------
# The checked-in reports say what the rule says about their own numbers


REPORTS = sorted(p.parent.name for p in (ROOT / "results").glob("*/metrics.json"))


def verdict_lines(text: str) -> list[str]:
    section = text.split("## Verdicts", 1)[1].split("\n## ", 1)[0] if "## Verdicts" in text else ""
    return [line for line in section.splitlines() if re.match(r"- .*: \*\*", line)]


@pytest.mark.parametrize("name", REPORTS)
def test_checked_in_report_verdicts_follow_from_its_metrics(tmp_path, name, capsys):
    from resnet.cli import main

    src = ROOT / "results" / name
    checked_in = (src / "report.md").read_text()
    assert verdict_lines(checked_in), f"{name}: no verdicts; re-render it with resnet reproduce NAME --from-metrics"
    for f in ("metrics.json", "config.json"):
        shutil.copy(src / f, tmp_path / f)
    experiment = json.loads((src / "config.json").read_text())["name"]
    assert main(["reproduce", experiment, "--from-metrics", str(tmp_path / "metrics.json")]) == 0
    capsys.readouterr()
    assert verdict_lines((tmp_path / "report.md").read_text()) == verdict_lines(checked_in)
