"""How every report reads its numbers against the paper: one rule, three answers.

Each part of a paper's claim that a report tests gets one of three answers:

- **agrees**: the difference the claim predicts is there, beyond the noise;
- **disagrees**: the opposite difference is there, beyond the noise;
- **not separable at this budget and seed count**: the difference is within the noise, either way.

The noise rule (``RULE``):

- two or more values on each side (seeds, or the layers/blocks of one net where a report says so): Welch's t-test,
  two-sided, p < 0.05;
- one seed on a side: the difference counts only if it exceeds ``SINGLE_SEED_FACTOR`` (2) times the seed-to-seed
  spread measured for that net and budget (``MEASURED_SPREADS``; where none was measured, the nearest measurement
  stands in and the report says so). At the ``short`` budget ResNet-20's final validation error moved by 1.32 points
  over three seeds (docs/speed.md), so one-seed differences under 2.64 points are not evidence;
- quantities with no measured spread and no samples (a loss-landscape rise): one must be more than ``RATIO_FACTOR``
  (2) times the other, an assumed margin, named as such;
- a count (how many of n blocks behave as claimed): the exact binomial test against one half, p < 0.05.

An ordering ("the deeper, the lower") is tested over every pair of the nets trained, not only the two ends: it
disagrees if any pair is separably the wrong way round, agrees if its two ends are separably the right way round and
no pair disagrees, and is not separable otherwise.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Sequence

from ..models import model_label

from .stats import binomial_two_sided_p, welch

AGREES = "agrees"
DISAGREES = "disagrees"
NOT_SEPARABLE = "not separable at this budget and seed count"
ANSWERS = (AGREES, DISAGREES, NOT_SEPARABLE)

ALPHA = 0.05  # two-sided significance level of the Welch and binomial tests
SINGLE_SEED_FACTOR = 2.0  # "well beyond the seed-to-seed spread": more than twice the largest measured difference
RATIO_FACTOR = 2.0  # quantities without a measured spread: one must be more than twice the other

RULE = [
    "Verdicts follow one rule for every report (`resnet.reporting.verdicts`); each part of the claim gets one of "
    f"three answers: *{AGREES}*, *{DISAGREES}*, or *{NOT_SEPARABLE}*.",
    f"- Two or more values per side: Welch's t-test, two-sided, p < {ALPHA}.",
    f"- One seed: a difference counts only if it exceeds {SINGLE_SEED_FACTOR:g} x the seed-to-seed spread measured "
    "for that net and budget (the spread used is named below).",
    "- An ordering over several nets: *disagrees* if any pair is separably the wrong way round, *agrees* if its two "
    "ends are separably the right way round and no pair disagrees, otherwise not separable.",
    f"- A count (how many of n cases behave as claimed): exact binomial test against one half, p < {ALPHA}.",
    f"- A single value with no measured spread: one must be more than {RATIO_FACTOR:g} x the other (an assumed margin).",
]


@dataclass(frozen=True)
class Spread:
    """The seed-to-seed spread of a final error: the largest difference between seeds of one configuration."""

    points: float
    where: str  # what was measured, and where it is written down
    measured_for: tuple[str, str]  # (model, budget) it was measured on

    def describe(self, models: Sequence[str] = (), budget: str | None = None) -> str:
        model, at = self.measured_for
        text = f"{self.points:.2f} points, {self.where}"
        others = [m for m in dict.fromkeys(models) if (m, budget) != self.measured_for]
        if others or (budget is not None and budget != at):
            others_txt = ", ".join(map(model_label, others or [model]))
            text += (f"; not measured for {others_txt} at `{budget}`, where this figure stands in (the real spread "
                     "there may be smaller or larger)")
        return text


# Measured seed-to-seed spreads of the final validation error, by (model, budget).
MEASURED_SPREADS = {
    ("resnet20", "short"): Spread(
        1.32, "the largest difference among ResNet-20's final validation errors over seeds 0, 1, 2 at the `short` "
              "budget (33.36 / 34.52 / 33.20%, bf16; fp32: 32.52 / 33.28 / 33.08%), docs/speed.md, \"The fast "
              "default loses no accuracy\"", ("resnet20", "short")),
    ("resnet20", "fast-32k"): Spread(
        0.10, "the difference between ResNet-20's final validation errors over seeds 0 and 1 at `fast-32k` (11.06 / "
              "10.96%, bf16; 10-view 9.96 / 9.64%), the campaign's runs (docs/reproduce.md); two seeds only, so the "
              "spread itself is uncertain", ("resnet20", "fast-32k")),
}


SEEDS_ONLY = "seeds only"  # the campaign's rule: a comparison needs two seeds of each net; nothing is borrowed


def rule_spread(model: str, budget) -> Spread | str:
    """What one-seed comparisons at ``budget`` (a ``runs.budgets.Budget``) are held to: ``SEEDS_ONLY`` under the
    campaign's rule, else the measured spread (``seed_spread``)."""
    return SEEDS_ONLY if budget.verdict_rule == "seeds" else seed_spread(model, budget.name)


def seed_spread(model: str, budget: str) -> Spread:
    """The spread measured for ``model`` at ``budget``; else the nearest measurement (the same net at another budget,
    else another net at this budget, else ResNet-20 at ``short``), which the report names as a stand-in."""
    if (model, budget) in MEASURED_SPREADS:
        return MEASURED_SPREADS[(model, budget)]
    same_net = [s for (m, _), s in MEASURED_SPREADS.items() if m == model]
    same_budget = [s for (_, b), s in MEASURED_SPREADS.items() if b == budget]
    return (same_net or same_budget or [MEASURED_SPREADS[("resnet20", "short")]])[0]


def spread_line(models: Sequence[str], budget) -> str:
    """The report line naming the seed-to-seed spread that single-seed comparisons must exceed (``budget``: a
    ``runs.budgets.Budget``, or its name under the spread rule)."""
    if getattr(budget, "verdict_rule", "spread") == "seeds":
        return ("- One seed of a net: not separable, whatever the gap. Comparisons need two or more seeds of each net "
                "compared (Welch's test on them); no spread is borrowed from another net or budget (the campaign's "
                "rule, docs/reproduce.md).")
    budget = getattr(budget, "name", budget)
    spread = seed_spread(models[0] if models else "resnet20", budget)
    return (f"- Seed-to-seed spread used for one-seed comparisons: {spread.describe(models, budget)}. Threshold: "
            f"{SINGLE_SEED_FACTOR:g} x {spread.points:.2f} = {SINGLE_SEED_FACTOR * spread.points:.2f} points.")


@dataclass(frozen=True)
class Sample:
    """The values of one side of a comparison: one per seed (``unit="seed"``), or per layer/block of one net."""

    label: str
    values: tuple[float, ...]
    unit: str = "seed"

    def __init__(self, label: str, values: Sequence[float] | float, unit: str = "seed"):
        vals = (float(values),) if isinstance(values, (int, float)) else tuple(float(v) for v in values)
        if not vals:
            raise ValueError(f"{label}: no values")
        object.__setattr__(self, "label", label)
        object.__setattr__(self, "values", vals)
        object.__setattr__(self, "unit", unit)

    @property
    def mean(self) -> float:
        return statistics.mean(self.values)

    def describe(self, digits: int = 2) -> str:
        n = len(self.values)
        if n == 1:
            return f"{self.label} {self.values[0]:.{digits}f} (1 {self.unit})"
        return (f"{self.label} {self.mean:.{digits}f} +/- {statistics.stdev(self.values):.{digits}f} "
                f"({n} {self.unit}s)")


@dataclass(frozen=True)
class Finding:
    """The answer to one comparison and the numbers behind it."""

    answer: str
    evidence: str


def _direction(sign: int) -> str:
    return AGREES if sign > 0 else DISAGREES if sign < 0 else NOT_SEPARABLE


def compare(lower: Sample, higher: Sample, spread: Spread | str | None = None, digits: int = 2) -> Finding:
    """The claim: ``lower``'s values are below ``higher``'s. Welch's test with two or more values on each side;
    otherwise the difference of the means against ``SINGLE_SEED_FACTOR`` x ``spread``."""
    diff = higher.mean - lower.mean  # > 0: as claimed
    numbers = f"{lower.describe(digits)} vs {higher.describe(digits)}"
    if len(lower.values) >= 2 and len(higher.values) >= 2:
        w = welch(higher.values, lower.values)
        sign = (1 if diff > 0 else -1) if w.p < ALPHA else 0
        return Finding(_direction(sign), f"{numbers}; Welch t = {w.t:.2f}, {_p(w.p)}")
    if spread is None:
        raise ValueError("a one-seed comparison needs the measured seed-to-seed spread")
    if spread == SEEDS_ONLY:
        few = " and ".join(s.label for s in (lower, higher) if len(s.values) < 2)
        return Finding(NOT_SEPARABLE, f"{numbers}; fewer than two seeds of {few}: not separable under the "
                                      "two-seed rule")
    threshold = SINGLE_SEED_FACTOR * spread.points
    sign = (1 if diff > 0 else -1) if abs(diff) > threshold else 0
    relation = "beyond" if sign else "within"
    return Finding(_direction(sign), f"{numbers}; difference {abs(diff):.{digits}f}, {relation} "
                                     f"{SINGLE_SEED_FACTOR:g} x {spread.points:.2f} = {threshold:.2f}")


def compare_ratio(lower: Sample, higher: Sample, factor: float = RATIO_FACTOR, digits: int = 3) -> Finding:
    """The claim: ``lower`` (one positive value) is below ``higher``; it counts only if one is more than ``factor``
    times the other (no measured spread for such quantities: an assumed margin)."""
    a, b = lower.mean, higher.mean
    ratio = max(a, b) / max(min(a, b), 1e-30)
    sign = (1 if b > a else -1) if ratio > factor else 0
    return Finding(_direction(sign), f"{lower.label} {a:.{digits}f} vs {higher.label} {b:.{digits}f}, ratio "
                                     f"{ratio:.2f}, {'above' if sign else 'not above'} the assumed margin {factor:g}")


def combine(findings: Sequence[Finding]) -> str:
    """Several measures of one claim: agrees if at least one agrees and none disagrees; disagrees symmetrically;
    otherwise not separable."""
    answers = {f.answer for f in findings}
    if AGREES in answers and DISAGREES not in answers:
        return AGREES
    if DISAGREES in answers and AGREES not in answers:
        return DISAGREES
    return NOT_SEPARABLE


@dataclass(frozen=True)
class Ordering:
    answer: str
    ends: Finding
    steps: list[tuple[str, str, Finding]]  # consecutive pairs
    against: list[tuple[str, str, Finding]]  # every pair that is separably the wrong way round

    @property
    def evidence(self) -> str:
        text = self.ends.evidence
        if len(self.steps) > 1:
            text += "; steps: " + ", ".join(f"{a} -> {b} {_short(f.answer)}" for a, b, f in self.steps)
        if self.against and self.answer == DISAGREES:
            text += "; separably against the claim: " + ", ".join(f"{a} vs {b}" for a, b, _ in self.against)
        return text


def ordering(samples: Sequence[Sample], spread: Spread | str | None = None, digits: int = 2) -> Ordering:
    """The claim: ``samples`` are listed from the lowest value to the highest. Every pair is compared."""
    if len(samples) < 2:
        raise ValueError("an ordering needs two samples or more")
    pairs = {(i, j): compare(samples[i], samples[j], spread, digits)
             for i in range(len(samples)) for j in range(i + 1, len(samples))}
    ends = pairs[(0, len(samples) - 1)]
    against = [(samples[i].label, samples[j].label, f) for (i, j), f in pairs.items() if f.answer == DISAGREES]
    if against:
        answer = DISAGREES
    elif ends.answer == AGREES:
        answer = AGREES
    else:
        answer = NOT_SEPARABLE
    steps = [(samples[i].label, samples[i + 1].label, pairs[(i, i + 1)]) for i in range(len(samples) - 1)]
    return Ordering(answer, ends, steps, against)


def majority(count: int, total: int, what: str) -> Finding:
    """The claim: most of ``total`` cases behave as claimed (``count`` do). Exact binomial test against one half."""
    p = binomial_two_sided_p(count, total)
    sign = (1 if 2 * count > total else -1) if p < ALPHA and 2 * count != total else 0
    return Finding(_direction(sign), f"{count} of {total} {what}; binomial test against one half, {_p(p)}")


@dataclass(frozen=True)
class Verdict:
    """One part of the paper's claim, its answer and the numbers behind it."""

    claim: str
    answer: str  # one of ANSWERS, or "not tested"
    evidence: str

    def line(self) -> str:
        return f"- {self.claim}: **{self.answer}** ({self.evidence})."


NOT_TESTED = "not tested here"


def verdict(claim: str, finding: Finding | Ordering) -> Verdict:
    return Verdict(claim, finding.answer, finding.evidence)


def not_tested(claim: str, why: str) -> Verdict:
    return Verdict(claim, NOT_TESTED, why)


# The campaign's rule (budgets with ``verdict_rule="seeds"``), fixed in docs/reproduce.md before its runs finished.
SEEDS_RULE = [
    "Verdicts follow the campaign's rule (`resnet.reporting.verdicts`, docs/reproduce.md, fixed before its runs "
    f"finished); each part of the claim gets one of three answers: *{AGREES}*, *{DISAGREES}*, or *{NOT_SEPARABLE}*.",
    f"- Two nets compared: with two or more seeds of each, Welch's t-test on their seeds, two-sided, p < {ALPHA}; "
    "with fewer than two seeds of either, not separable, whatever the gap (no spread is borrowed).",
    "- An ordering over several nets: *disagrees* if any pair is separably the wrong way round, *agrees* if its two "
    "ends are separably the right way round and no pair disagrees, otherwise not separable.",
    "- Samples that are the layers or blocks of nets (Fig. 7, the lesion study): across seeds under the two-net rule "
    "(one value per seed: its mean over layers or blocks) where both nets have two or more; otherwise Welch's test "
    "over the layers or blocks of one net per side, said next to its p-value (they are not independent draws).",
    f"- A count (how many of n cases behave as claimed): the exact binomial test against one half, p < {ALPHA}.",
    "- A net with a run that ended near chance (80% validation error or more) did not train: its claims are not "
    "tested.",
]


def verdict_section(verdicts: Sequence[Verdict], spread_lines: Sequence[str] = (), rule: str = "spread") -> list[str]:
    """The report's "Verdicts" section: the rule, the spread used, then one line per part of the claim."""
    if rule == "seeds":
        return ["## Verdicts", "", *SEEDS_RULE, "", *[v.line() for v in verdicts]]
    return ["## Verdicts", "", *RULE, *spread_lines, "", *[v.line() for v in verdicts]]


def _p(p: float) -> str:
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}" if p < 0.1 else f"p = {p:.2f}"


def _short(answer: str) -> str:
    return "not separable" if answer == NOT_SEPARABLE else answer
