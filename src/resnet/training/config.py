"""What a training run is asked to do: ``TrainConfig``, frozen, from the command line (or a run of the store) to the
trainer, and the ``resnet train`` command line that asks for it (``arguments``: the one place a run started as its
own process gets its flags). Plain data, so that what names a run (``runs.spec``) can build one without loading the
trainer."""

from __future__ import annotations

from dataclasses import dataclass, fields


@dataclass(frozen=True)
class TrainConfig:
    model: str = "resnet20"
    shortcut: str | None = None
    variant: str | None = None
    num_classes: int | None = None  # default: the dataset's
    zero_init_residual: bool = False
    data: str = "embedded"
    data_dir: str | None = None
    protocol: str = "val"  # "val": train on 45k, evaluate on the held-out 5k (Sec. 4.2); "test": 50k / 10k test
    recipe: str = "paper"
    epochs: float | None = None
    iterations: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    warmup: int | None = None  # iterations of linear learning-rate warm-up (default: the recipe's)
    seed: int = 0
    out: str = "runs/run"
    resume: bool = False
    device: str = "auto"
    runtime: str = "auto"  # "auto": the fastest measured here (runtime.autotune); or fp32, fp32-cl, bf16...
    precision: str = "auto"
    channels_last: bool | None = None
    compile: bool | None = None
    cuda_graphs: bool = False  # with compile on CUDA: CUDA graphs (runtime.Runtime.cuda_graphs); changes no result
    eval_every: int | None = None  # iterations between evaluations (default: Recipe.eval_every)
    sync_bn: bool = False
    workers: int = 4
    deterministic: bool = False
    progress: bool = True
    check_every: int = 20  # iterations between loss checks (divergence, stop requests, progress figures)
    checkpoint_minutes: float = 10.0  # also checkpoint at the first loss check this long after the last checkpoint
    allow_changes: tuple[str, ...] = ()  # settings (of RESULT_SETTINGS) a --resume may change deliberately
    tensorboard: bool = False  # also each evaluation's scalars as TensorBoard events in the run directory

    @classmethod
    def from_json(cls, config: dict) -> "TrainConfig":
        """The ``config`` a run's config.json holds (``asdict`` of the run's TrainConfig): a setting of another
        version is left out, one it lacks takes its default."""
        known = {f.name: config[f.name] for f in fields(cls) if f.name in config}
        if "allow_changes" in known:  # a JSON list
            known["allow_changes"] = tuple(known["allow_changes"])
        return cls(**known)

    def arguments(self) -> list[str]:
        """The ``resnet train`` flags that give this config: one per setting that differs from its default (a switch
        as ``--name`` or ``--no-name``, a list comma-joined). ``check_every`` has no flag."""
        args = []
        for f in fields(self):
            value, flag = getattr(self, f.name), "--" + f.name.replace("_", "-")
            if value == f.default:
                continue
            if f.name == "check_every":
                raise ValueError(f"check_every={value} has no flag of resnet train")
            if isinstance(value, bool):
                args.append(flag if value else "--no-" + flag[2:])
            elif isinstance(value, tuple):
                args += [flag, ",".join(value)]
            else:
                args += [flag, str(value)]
        return args


# The settings that decide what a run computes. A resumed run keeps them, unless --allow-changes names them (recorded
# in config.json's history). Where the data lives, the device, precision, memory layout, compilation, workers and
# logging may change from one session to the next.
RESULT_SETTINGS = ("model", "shortcut", "variant", "num_classes", "zero_init_residual", "data", "protocol", "recipe",
                   "epochs", "iterations", "batch_size", "lr", "warmup", "seed", "sync_bn", "eval_every")
