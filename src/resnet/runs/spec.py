"""What names a shared run: the options an experiment (or the campaign) is run with, and one run's settings.

``RunSpec.key`` names every setting that changes a run's numbers: model, shortcut, recipe, iterations, warm-up,
batch, evaluation interval (the logged training error is that of the last interval), resolved precision, seed and
data, e.g. ``resnet20-A-paper-1000it-wu100-b128-ev100-bf16-s0-cifar10``. Run directories named by the earlier key
(``resnet20-A-short-s0-cifar10``: model, shortcut, budget name, seed, data) are still found (``legacy_key``), and used
only when their ``config.json`` matches. The code version is recorded in each run's ``config.json`` but is not part
of the key: every commit would otherwise retrain every run.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from ..models import model_config, model_label
from ..runtime import resolve_runtime
from ..training.config import TrainConfig
from ..training.recipes import resolve_recipe
from ..training.run_dir import code_version
from .budgets import Budget, get_budget

@dataclass(frozen=True)
class Options:
    """What the command line decides for one experiment."""

    name: str
    budget: str = "short"
    seeds: int = 1
    data: str = "cifar10"
    data_dir: str | None = None
    out: str | None = None  # default results/<name>
    runs: str | None = None  # default: OUT/../runs (shared by every experiment written next to OUT)
    device: str = "auto"
    precision: str = "auto"
    depths: tuple[int, ...] | None = None  # override the experiment's default depths
    launch: bool = False  # ImageNet experiments: run the command lines instead of printing them
    progress: bool = False
    compile: bool = False  # torch.compile the training runs (its minutes of compile time pay off on long runs only)
    jobs: int = 1  # runs trained at once, each in its own process
    threads: int | None = None  # torch threads per process (default: torch's)
    evaluations: int | None = None  # instead of the budget's (the campaign's first runs evaluated less often)
    iterations: int | None = None  # instead of the budget's (a shorter try): a budget named ``<budget>-<N>it``
    checkpoint_minutes: float = 10.0  # a checkpoint this often between evaluations (TrainConfig.checkpoint_minutes)
    records: str | None = None  # report on the finished runs recorded here (every seed), training nothing
    data_files: str | None = None  # what the images were (data.describe: "JPEG files of quality 75 (...)"), as measured

    @property
    def out_dir(self) -> Path:
        return Path(self.out) if self.out else Path("results") / self.name

    @property
    def runs_dir(self) -> Path:
        return Path(self.runs) if self.runs else self.out_dir.parent / "runs"

    @property
    def plan(self) -> Budget:
        budget = get_budget(self.budget)
        if self.iterations:
            budget = replace(budget, name=f"{budget.name}-{self.iterations}it", iterations=self.iterations)
        return replace(budget, evaluations=self.evaluations) if self.evaluations else budget

    @property
    def resolved_precision(self) -> str:
        """The precision the training runs use on this machine (``auto`` resolved: bf16 where it is native)."""
        return self.analysis_runtime().precision

    def analysis_runtime(self):
        """Device and precision of the analyses (eager: they run each net a handful of times), and the precision the
        training runs resolve to."""
        return resolve_runtime(self.device, self.precision, compile=False)

    def command(self) -> str:
        """The command line that regenerates this experiment's outputs."""
        if self.records:
            return shlex.join(["resnet", "reproduce", self.name, "--budget", self.budget, "--records", self.records,
                               "--data", self.data, "--out", str(self.out_dir)]
                              + (["--depths", ",".join(map(str, self.depths))] if self.depths else []))
        args = ["resnet", "reproduce", self.name, "--budget", self.budget, "--seeds", str(self.seeds),
                "--data", self.data]
        if self.data_dir:
            args += ["--data-dir", self.data_dir]
        if self.depths:
            args += ["--depths", ",".join(map(str, self.depths))]
        args += ["--out", str(self.out_dir)]
        if self.runs:
            args += ["--runs", self.runs]
        if self.device != "auto":
            args += ["--device", self.device]
        if self.precision != "auto":
            args += ["--precision", self.precision]
        if self.compile:
            args.append("--compile")
        if self.jobs != 1:
            args += ["--jobs", str(self.jobs)]
        if self.threads:
            args += ["--threads", str(self.threads)]
        if self.launch:
            args.append("--launch")
        return shlex.join(args)

    def to_dict(self) -> dict:
        d = asdict(self)
        if self.iterations is None:  # the budget's own, as reports recorded before the option existed
            del d["iterations"]
        d.update(out=str(self.out_dir), runs=str(self.runs_dir), budget_plan=self.plan.to_dict(),
                 command=self.command(), code_version=source_version(), argv=sys.argv)
        return d

    @classmethod
    def from_config(cls, config: dict) -> "Options":
        """The options a report's ``config.json`` was written with (``runs`` from its command line: the field of that
        name may hold the experiment's list of run directories instead)."""
        args = shlex.split(config.get("command", ""))
        runs = args[args.index("--runs") + 1] if "--runs" in args[:-1] else None
        fields = {k: config[k] for k in ("budget", "seeds", "data", "data_dir", "out", "device", "precision",
                                         "launch", "progress", "compile", "jobs", "threads", "records",
                                         "data_files")
                  if k in config}
        depths = config.get("depths")
        return cls(name=config["name"], runs=runs, depths=tuple(depths) if depths else None, **fields)


def source_version() -> str:
    """The code version a report records: the trainer's ``code_version()``, but ``-dirty`` only when the package's own
    files differ from the commit (results, docs and tests being rewritten do not change what computed them)."""
    version = code_version()
    if not version.endswith("-dirty"):
        return version
    package = Path(__file__).resolve().parents[1]
    try:
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=normal", "--", "."], cwd=package,
                                capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return version
    if status.returncode != 0 or status.stdout.strip():
        return version
    return version[:-len("-dirty")]


# What a run of the store sets in its TrainConfig, and so what a run directory's config.json must hold to be this run.
SETTINGS = ("model", "shortcut", "data", "protocol", "recipe", "iterations", "warmup", "batch_size", "seed",
            "eval_every")


@dataclass(frozen=True)
class RunSpec:
    model: str  # e.g. "resnet20", "plain56"
    shortcut: str | None = None  # None: the model's default (A on CIFAR); plain nets have none
    seed: int = 0

    @property
    def plain(self) -> bool:
        return model_config(self.model).plain

    @property
    def depth(self) -> int:
        return model_config(self.model).depth

    @property
    def label(self) -> str:
        opt = f" ({self.shortcut})" if self.shortcut and self.shortcut != "A" else ""
        return f"{model_label(self.model)}{opt}"

    def train_config(self, opts: Options) -> TrainConfig:
        """The trainer's settings for this run under ``opts``'s budget: those of ``SETTINGS``, which decide what is
        trained; the device, output folder and progress bars (the others) are the caller's."""
        plan = opts.plan
        return TrainConfig(model=self.model, shortcut=None if self.plain else self.shortcut, data=opts.data,
                           protocol="val", recipe=plan.recipe, iterations=plan.iterations, warmup=plan.warmup,
                           batch_size=plan.batch_size, seed=self.seed,
                           eval_every=max(1, plan.iterations // plan.evaluations))

    def settings(self, opts: Options) -> dict:
        """``train_config``'s ``SETTINGS`` by name, as a run's config.json records them."""
        cfg = self.train_config(opts)
        return {name: getattr(cfg, name) for name in SETTINGS}

    def recipe(self, opts: Options):
        plan = opts.plan
        return resolve_recipe(plan.recipe, "cifar", self.depth, iterations=plan.iterations, batch_size=plan.batch_size,
                              warmup=plan.warmup)

    def key(self, opts: Options) -> str:
        """Every setting that changes this run's numbers (see the module's docstring)."""
        shortcut = "plain" if self.plain else (self.shortcut or "A")
        recipe = self.recipe(opts)
        cfg = self.train_config(opts)
        return (f"{self.model}-{shortcut}-{recipe.name}-{recipe.iterations}it-wu{recipe.warmup_iterations}"
                f"-b{recipe.batch_size}-ev{cfg.eval_every}-{opts.resolved_precision}-s{self.seed}-{opts.data}")

    def legacy_key(self, opts: Options) -> str:
        """The key of run directories written before the key named every setting: model, shortcut, budget name, seed
        and data (``resnet20-A-short-s0-cifar10``)."""
        shortcut = "plain" if self.plain else (self.shortcut or "A")
        return f"{self.model}-{shortcut}-{opts.plan.name}-s{self.seed}-{opts.data}"

    def mismatches(self, path: Path, opts: Options) -> list[str]:
        """How the run in ``path`` (its ``config.json``) differs from this spec under ``opts``: ``[]`` when it is
        this run; ``["no config.json"]`` when it cannot tell."""
        try:
            config = json.loads((path / "config.json").read_text())
        except (OSError, ValueError):
            return ["no readable config.json"]
        ran = dict(config.get("config", {}))
        want_cfg = self.settings(opts)
        if not self.plain:  # no shortcut given means option A on the CIFAR nets: the same run
            ran["shortcut"], want_cfg["shortcut"] = ran.get("shortcut") or "A", want_cfg["shortcut"] or "A"
        out = [f"{k}={ran.get(k)!r} (asked: {v!r})" for k, v in want_cfg.items() if ran.get(k) != v]
        precision = config.get("runtime", {}).get("precision")
        if precision != opts.resolved_precision:
            out.append(f"precision={precision!r} (asked: {opts.resolved_precision!r})")
        want = self.recipe(opts).to_dict()
        had = config.get("recipe", {})
        out += [f"recipe {k}={had[k]!r} (asked: {want[k]!r})" for k in sorted(set(want) & set(had) - {"note"})
                if had[k] != want[k] and not (isinstance(want[k], (list, tuple)) and list(want[k]) == had[k])]
        return out
