"""Training budgets of the reproductions: how long each shared run trains.

``paper`` is the paper's CIFAR schedule (Sec. 4.2: 64k iterations of batch 128, lr /10 at 32k and 48k). ``short`` is
what fits on a laptop CPU within about an hour for the eight nets of Fig. 6; the recipe's milestones are fractions of
the run, so they scale with it (lr /10 at 50% and 75%). ``medium`` is four times ``short``. ``smoke`` proves the
pipeline end to end in seconds (tests). ``fast-16k`` and ``fast-32k`` train with the project's ``fast`` recipe
(one-cycle, beyond the paper) for the campaign's shipped weights (``campaign.py``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

from ..errors import UsageError, choices


@dataclass(frozen=True)
class Budget:
    name: str
    iterations: int  # SGD steps of every training run
    batch_size: int | None  # None: the recipe's (128 on CIFAR, Sec. 4.2)
    evaluations: int  # evaluations of the held-out split along a run (the points of the error curves)
    analysis_images: int | None  # images used by the analyses (layer responses, lesion); None: the whole split
    landscape_images: int  # training images of the loss-landscape slices
    landscape_points: tuple[int, int]  # points of the 1-D slice, points per axis of the 2-D slice
    gradient_steps: int  # length of the gradient-flow training
    gradient_records: tuple[int, ...]  # steps at which every layer's gradient norm is recorded
    note: str
    warmup: int | None = None  # linear lr warm-up iterations (None: the recipe's own, Sec. 4.2)
    recipe: str = "paper"  # the training recipe of every run (resnet.training.recipes)
    # How one-seed comparisons are read (reporting/verdicts.py): "spread" (against a measured seed-to-seed spread, the
    # earlier budgets' rule) or "seeds" (two seeds of each net compared, else not separable: the campaign's rule,
    # fixed in docs/reproduce.md before its runs finished).
    verdict_rule: str = "spread"

    def to_dict(self) -> dict:
        return asdict(self)


BUDGETS = {
    "smoke": Budget("smoke", iterations=2, batch_size=8, evaluations=1, analysis_images=16, landscape_images=16,
                    landscape_points=(5, 3), gradient_steps=2, gradient_records=(0, 1),
                    note="a handful of iterations on tiny data: checks the pipeline, not the paper"),
    # A CPU budget: the eight nets of Fig. 6 (plain/ResNet 20/32/44/56) at 1000 iterations each take about 45 minutes
    # on 2 cores. 1000 iterations of batch 128 are 2.8 epochs of the 45k split: enough for the optimisation gap between
    # plain and residual nets (the degradation problem is visible early, Fig. 6), far from convergence. Every net warms
    # up linearly over the first 100 iterations (beyond the paper, which warms up only ResNet-110/1202): measured here,
    # ResNet-56 at lr 0.1 from step 0 blows up within 5 steps and stays at chance for a whole 600-iteration run.
    "short": Budget("short", iterations=1000, batch_size=None, evaluations=10, analysis_images=1000,
                    landscape_images=500, landscape_points=(21, 9), gradient_steps=120,
                    gradient_records=(0, 10, 40, 119), warmup=100,
                    note="a CPU budget: 1000 iterations of batch 128 (2.8 epochs), linear warm-up over the first 100, "
                         "lr 0.1 /10 at 500 and 750"),
    # Four times ``short`` (11.4 epochs), for a CPU afternoon: a few nets, chosen with --depths.
    "medium": Budget("medium", iterations=4000, batch_size=None, evaluations=20, analysis_images=1000,
                     landscape_images=500, landscape_points=(21, 9), gradient_steps=400,
                     gradient_records=(0, 10, 100, 399), warmup=100,
                     note="a longer CPU budget: 4000 iterations of batch 128 (11.4 epochs), linear warm-up over the "
                          "first 100, lr 0.1 /10 at 2000 and 3000"),
    "paper": Budget("paper", iterations=64_000, batch_size=None, evaluations=160, analysis_images=None,
                    landscape_images=2000, landscape_points=(51, 25), gradient_steps=2000,
                    gradient_records=(0, 10, 100, 500, 1000, 1999),
                    note="Sec. 4.2: 64k iterations of batch 128, lr 0.1 /10 at 32k and 48k"),
}
# The fast recipe (src/resnet/training/fast.py: one-cycle, nesterov, label smoothing, a final 10-view test) at half
# and the whole of the paper's 64k iterations divided by 4 and 2. Measured on ResNet-20 (docs/speed.md, one seed
# each): 15.36-15.58% validation error at 4k, 13.42% at 8k; each doubling of the budget has bought 1-2 points.
# Its own warm-up is the first 15% of the cycle. An evaluation every 500 iterations gives a smooth curve (each a
# 5k-image pass: about 3% of a run's time). The first campaign runs at fast-32k evaluated every 2,000 (16 points);
# their records keep that cadence in their key (``ev2000``).
for _iterations in (16_000, 32_000):
    _name = f"fast-{_iterations // 1000}k"
    BUDGETS[_name] = replace(BUDGETS["paper"], name=_name, iterations=_iterations, evaluations=_iterations // 500,
                             recipe="fast", verdict_rule="seeds",
                             note=f"the fast recipe at {_iterations} iterations of batch 128: one-cycle to lr 0.2, "
                                  "nesterov, weight decay 5e-4, label smoothing 0.1, final 10-view test")


def get_budget(name: str) -> Budget:
    if name not in BUDGETS:
        raise UsageError(f"unknown budget {name!r}; choose one of: {choices(BUDGETS)}")
    return BUDGETS[name]
