"""The training loop: SGD on a recipe's schedule, periodic evaluation, checkpoints that resume exactly.

One loop serves a laptop CPU and a multi-node GPU job: under ``torchrun`` the model is wrapped in
DistributedDataParallel and each rank trains on its slice of every global batch (the recipe's batch size and learning
rate are those of the whole job, whatever the number of processes).
"""

from __future__ import annotations

import logging
import math
import signal
import sys
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm import tqdm

from ..data.sources import names
from ..errors import Divergence, UsageError
from ..models import build_model
from ..reporting.plots import plot_error_curves
from ..runtime import configure_kernels
from ..weights.format import save_weights
from .runtime_choice import select_train_runtime
from .checkpoint import (CHECKPOINT, checkpoint_files, load_checkpoint, load_latest_checkpoint, rng_state,
                         save_checkpoint, set_rng_state)
from .data import TrainingData, load_training_data
from .distributed import Dist, broadcast_buffers, broadcast_flag, convert_sync_batchnorm, init_distributed, shutdown
from .recipes import Recipe, resolve_recipe
from .run_dir import RunDir, changed_settings
from .step import build_sgd, set_lr, train_step
from .tensorboard import TensorBoard

log = logging.getLogger("resnet.train")


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
    runtime: str = "auto"  # "auto": the fastest measured here (training.autotune); or fp32, fp32-cl, bf16...
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


# The settings that decide what a run computes. A resumed run keeps them, unless --allow-changes names them (recorded
# in config.json's history). Where the data lives, the device, precision, memory layout, compilation, workers and
# logging may change from one session to the next.
RESULT_SETTINGS = ("model", "shortcut", "variant", "num_classes", "zero_init_residual", "data", "protocol", "recipe",
                   "epochs", "iterations", "batch_size", "lr", "warmup", "seed", "sync_bn", "eval_every")


@dataclass
class RunState:
    """What a checkpoint carries besides weights, optimiser and random generators (the ``state`` of checkpoint.pt)."""
    step: int = 0
    best_val_error: float = math.inf
    plateau_drops: int = 0  # the plateau schedule (Sec. 3.4): /10 drops so far, the best error, evaluations without
    plateau_best: float = math.inf  # improvement
    plateau_bad: int = 0
    seconds: float = 0.0  # wall time of the run so far (steps, evaluations, checkpoints), summed over sessions

    @classmethod
    def from_dict(cls, d: dict) -> "RunState":
        return cls(**{f.name: d[f.name] for f in fields(cls) if f.name in d})

    def plateau_update(self, val_error: float, patience: int) -> None:
        """Sec. 3.4: divide the learning rate by 10 when the error plateaus."""
        if val_error < self.plateau_best - 1e-3:
            self.plateau_best, self.plateau_bad = val_error, 0
        else:
            self.plateau_bad += 1
            if self.plateau_bad >= patience:
                self.plateau_drops += 1
                self.plateau_bad = 0


@dataclass(frozen=True)
class TrainResult:
    """What ``train`` returns. ``stopped_by``: the signal that stopped the run after saving its checkpoint (the command
    line turns it into its exit status), None for a run that reached its end."""
    model: str
    rank: int
    step: int
    eval_split: str
    best_val_error: float | None = None
    val_error: float | None = None
    val_top5_error: float | None = None
    images_per_s: float | None = None
    seconds: float | None = None
    tta: str | None = None
    val_error_tta: float | None = None
    val_top5_error_tta: float | None = None
    stopped_by: int | None = None


@dataclass
class _Session:
    """What one session of a run trains with: built by ``Trainer._setup``."""
    data: TrainingData
    batches: object  # data.make_batches(...): ``iterate(start_step)`` and ``steps_per_epoch``
    net: torch.nn.Module
    train_model: torch.nn.Module  # the net as stepped: DDP-wrapped and/or compiled
    optimizer: torch.optim.Optimizer
    recipe: Recipe
    eval_every: int


class StopRequested(Exception):
    def __init__(self, signum: int):
        self.signum = signum


class Trainer:
    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg
        choice = select_train_runtime(cfg)  # measured on CPU unless named or set by flags; cached
        self.rt = replace(choice.runtime, cuda_graphs=cfg.cuda_graphs and choice.runtime.compile
                          and choice.runtime.device.type == "cuda")
        self.dist: Dist = init_distributed(self.rt.device.type)
        if self.dist.is_main:
            log.info(f"runtime {choice.name}: {choice.reason}")
        if self.dist.enabled and self.rt.device.type == "cuda":
            self.rt = replace(self.rt, device=torch.device("cuda", self.dist.local_rank))
        configure_kernels(self.rt.device, cfg.deterministic)
        self.run = RunDir(cfg.out, enabled=self.dist.is_main)
        self._signal = 0
        self.board: TensorBoard | None = None  # rank 0's TensorBoard events, with cfg.tensorboard

    def _install_signal_handlers(self):
        def request_stop(signum, frame):
            if self._signal:  # a second Ctrl-C: stop now
                raise KeyboardInterrupt
            self._signal = signum

        for s in (signal.SIGINT, signal.SIGTERM):
            try:
                signal.signal(s, request_stop)
            except ValueError:  # not in the main thread
                pass

    def _say(self, message: str, warning: bool = False) -> None:
        """What the run does (resuming, stopping) and warnings, from rank 0, to the ``resnet.train`` logger (the
        command line shows them as ``resnet train: ...`` lines; the per-evaluation lines go with the progress bar)."""
        if self.dist.is_main:
            log.log(logging.WARNING if warning else logging.INFO, f"{'warning: ' if warning else ''}{message}")

    def _open_run(self) -> tuple[dict | None, dict | None, list]:
        """What the run directory holds for this run: (the checkpoint to continue from, None to start; the run's
        previous config.json; its history of deliberate changes, with this session's appended)."""
        cfg, d = self.cfg, self.dist
        found = checkpoint_files(cfg.out)
        if not (cfg.resume or (d.restarted and found)):
            if found:
                raise UsageError(f"{cfg.out} already holds a run; pass --resume to continue it, or choose another "
                                 "--out")
            return None, None, []
        allowed = {a.strip().lstrip("-").replace("-", "_") for a in cfg.allow_changes if a.strip()}
        unknown = sorted(allowed - set(RESULT_SETTINGS))
        if unknown:
            raise UsageError(f"--allow-changes: {unknown[0].replace('_', '-')!r} is not a setting of a run; choose "
                             "from " + ",".join(k.replace("_", "-") for k in RESULT_SETTINGS))
        previous = self.run.read_config()
        ckpt = load_latest_checkpoint(cfg.out, warn=lambda m: self._say(m, warning=True))
        before = (previous or {}).get("config") or (ckpt or {}).get("config") or {}
        changed = changed_settings(before, asdict(cfg), RESULT_SETTINGS)
        refused = {k: v for k, v in changed.items() if k not in allowed}
        if refused:
            diff = ", ".join(f"--{k.replace('_', '-')} {_shown(old)} -> {_shown(new)}"
                             for k, (old, new) in refused.items())
            raise UsageError(f"{cfg.out} holds a run with other settings ({diff}); resume with its settings, or pass "
                             f"--allow-changes {','.join(k.replace('_', '-') for k in refused)} to change them "
                             "deliberately")
        step = ckpt["state"]["step"] if ckpt else 0
        history = list((previous or {}).get("history") or [])
        if changed:
            history.append({"step": step, "changed": {k: list(v) for k, v in changed.items()}, "command": sys.argv})
        self._say(f"resuming {cfg.out} from its checkpoint at step {step}" if ckpt
                  else f"{cfg.out} has no checkpoint yet; starting the run")
        return ckpt, previous, history

    # ---- the run ------------------------------------------------------------------------------------------------
    def fit(self) -> TrainResult:
        """Train the run in ``cfg.out``, or continue it, as its one writer (rank 0 holds the run's lock). A stop
        request (SIGTERM, Ctrl-C) from here on is honoured at the first loss check of the loop, with a checkpoint: the
        handlers are in place before the run's lock is taken, so a supervisor that sees the lock (gpu_campaign.py)
        knows that a signal will be saved, not fatal, even during the minutes of setup and compilation."""
        self._install_signal_handlers()
        problem, warning = None, None
        try:
            self.run.create()
            warning = self.run.lock()
        except UsageError as e:
            problem = e
        if broadcast_flag(self.dist, problem is not None, self.rt.device):  # every rank stops if rank 0 cannot write
            raise problem or UsageError(f"rank 0 cannot write the run directory {self.cfg.out} (see its error)")
        if warning:
            self._say(warning, warning=True)
        try:
            ckpt, previous_config, history = self._open_run()
            s = self._setup(previous_config)
            state, record = self._restore(s, ckpt)
            self._write_config(s, state, history)
            if self.cfg.tensorboard and self.dist.is_main:
                self.board = TensorBoard(self.cfg.out, start_step=state.step)
            return self._train(s, state, record)
        finally:
            if self.board is not None:
                self.board.close()
            self.run.unlock()

    def _setup(self, previous_config: dict | None) -> _Session:
        """The data, the net, its recipe (resolved once) and optimiser, the evaluation cadence."""
        cfg, rt, d = self.cfg, self.rt, self.dist
        data = load_training_data(cfg, rt, d)
        classes = data.classes
        torch.manual_seed(cfg.seed)  # identical initial weights on every rank
        net = build_model(cfg.model, num_classes=cfg.num_classes or len(classes), shortcut=cfg.shortcut,
                          variant=cfg.variant, zero_init_residual=cfg.zero_init_residual)
        if net.config.num_classes < len(classes):
            raise UsageError(f"--num-classes {net.config.num_classes} is fewer than the {len(classes)} classes of the data")
        net = rt.prepare(net)
        if d.enabled and cfg.sync_bn:
            net = convert_sync_batchnorm(net, rt.device.type)
        recipe = resolve_recipe(cfg.recipe, net.config.family, net.config.depth, iterations=cfg.iterations,
                                epochs=cfg.epochs, train_images=data.info["train_images"], batch_size=cfg.batch_size,
                                lr=cfg.lr, warmup=cfg.warmup)
        if recipe.tta not in data.test_protocols:
            raise UsageError(f"the {cfg.recipe!r} recipe ends with the CIFAR test protocol {recipe.tta!r}; "
                             f"use it on {', '.join(names('memory'))}, or --recipe paper|step on image folders")
        batches = data.make_batches(recipe.batch_size, rt.channels_last)
        # A resumed run keeps its cadence unless --eval-every says otherwise.
        eval_every = (cfg.eval_every or (previous_config or {}).get("eval_every")
                      or recipe.eval_every(batches.steps_per_epoch))
        train_model = net
        if d.enabled:
            train_model = torch.nn.parallel.DistributedDataParallel(
                train_model, device_ids=[rt.device.index] if rt.device.type == "cuda" else None)
        train_model = rt.compile_model(train_model)  # compiled if the runtime compiles, eager if compiling fails
        return _Session(data, batches, net, train_model,
                        build_sgd(net.parameters(), recipe), recipe, eval_every)

    def _restore(self, s: _Session, ckpt: dict | None) -> tuple[RunState, dict | None]:
        """The run state to start from (the checkpoint's, or a fresh one), with the net, optimiser and random
        generators set from the checkpoint; and the last evaluation record of the resumed run."""
        state = RunState()
        if ckpt is not None:
            if ckpt["model_config"] != s.net.config.to_dict():
                raise UsageError(f"{Path(self.cfg.out) / CHECKPOINT} is a checkpoint of {ckpt['model_config']['name']} "
                                 f"({ckpt['model_config']}), not of {s.net.config.name}; use the same model options")
            s.net.load_state_dict(ckpt["model"])
            s.optimizer.load_state_dict(ckpt["optimizer"])
            state = RunState.from_dict(ckpt["state"])
            set_rng_state(ckpt["rng"])
        self.run.truncate_metrics(state.step)  # a fresh start drops the records of a run that died unsaved
        previous = [r for r in self.run.metrics() if not r.get("final")] if ckpt and self.dist.is_main else []
        return state, (previous[-1] if previous else None)

    def _write_config(self, s: _Session, state: RunState, history: list) -> None:
        self.run.write_config({"config": asdict(self.cfg), "recipe": s.recipe.to_dict(), "model": s.net.config.to_dict(),
                               "runtime": self.rt.to_dict(), "world_size": self.dist.world_size, "data": s.data.info,
                               "classes": s.data.classes, "eval_every": s.eval_every, "resumed_at": state.step or None,
                               **({"history": history} if history else {})})

    def _train(self, s: _Session, state: RunState, record: dict | None) -> TrainResult:
        """The loop: one ``train_step`` per iteration on the recipe's schedule; loss checks every ``check_every``
        iterations; evaluation, weights, checkpoint and curves every ``eval_every``."""
        cfg, total = self.cfg, s.recipe.iterations
        stream = s.batches.iterate(state.step)
        window = _Window(self.rt.device)
        bar = _progress(cfg.progress and self.dist.is_main, total, state.step, s.net.config.name)
        clock = _Clock(state.seconds)
        step = state.step
        saved_at = time.monotonic()  # when the last checkpoint was written (or this session began)
        try:
            while step < total:
                lr = s.recipe.lr_at(step, state.plateau_drops)
                set_lr(s.optimizer, lr)
                x, y = next(stream)
                loss, logits = train_step(s.train_model, s.optimizer, x, y, autocast=self.rt.autocast,
                                          label_smoothing=s.recipe.label_smoothing)
                window.add(loss, logits, y)
                step += 1
                bar.update(1)
                at_eval = step % s.eval_every == 0 or step == total
                if step % cfg.check_every == 0 or at_eval:
                    self._check(window, step)
                    bar.set_postfix(loss=f"{window.loss:.3f}", err=f"{window.error:.1f}%", lr=f"{lr:.3g}")
                if at_eval:
                    record = self._evaluate_and_save(s, state, window, step, lr, clock, bar)
                    saved_at = time.monotonic()
                elif step % cfg.check_every == 0 and self._checkpoint_due(saved_at):
                    state.step, state.seconds = step, clock.elapsed()
                    self._checkpoint(s, state)
                    saved_at = time.monotonic()
        except StopRequested as stop:
            state.step, state.seconds = step, clock.elapsed()
            self._checkpoint(s, state)
            bar.close()
            self._say(f"{signal.Signals(stop.signum).name} received; saved a checkpoint at step {step} in {cfg.out}; "
                      "continue with --resume")
            shutdown(self.dist)
            return TrainResult(model=s.net.config.name, rank=self.dist.rank, step=step,
                               eval_split=s.data.info["eval_split"], stopped_by=stop.signum)
        finally:
            bar.close()
        return self._finish(s, state, step, record, clock)

    def _checkpoint_due(self, saved_at: float) -> bool:
        """A timed checkpoint between evaluations: a run killed without warning (``kill -9``, a lost machine) loses at
        most ``checkpoint_minutes`` of training. Every rank agrees (rank 0's clock decides)."""
        due = time.monotonic() - saved_at >= 60.0 * self.cfg.checkpoint_minutes
        return broadcast_flag(self.dist, due if self.dist.is_main else False, self.rt.device)

    def _check(self, window: _Window, step: int) -> None:
        """Stop on a non-finite loss (every rank, if any rank saw one) or on a stop request (a signal)."""
        d, ckpt_path = self.dist, Path(self.cfg.out) / CHECKPOINT
        bad_step = window.first_nonfinite(step)
        if broadcast_flag(d, bad_step is not None, self.rt.device):
            last = load_checkpoint(ckpt_path)["state"]["step"] if ckpt_path.exists() else None
            raise Divergence(
                f"loss became non-finite at step {bad_step or step}; stopped without saving; "
                + (f"the last good checkpoint is {ckpt_path} (step {last})" if last is not None
                   else "no checkpoint was saved yet")
                + "; lower the learning rate (--lr) or warm up (e.g. --recipe paper on deep nets)")
        if broadcast_flag(d, bool(self._signal), self.rt.device):
            raise StopRequested(self._signal or signal.SIGTERM)

    def _evaluate(self, s: _Session, tta: str = "center") -> dict:
        """Every rank evaluates its share of the held-out images, with rank 0's BN statistics (DDP leaves each rank
        its own until the next forward)."""
        broadcast_buffers(self.dist, s.net)
        return s.data.evaluate(s.net, tta=tta)

    def _evaluate_and_save(self, s: _Session, state: RunState, window: _Window, step: int, lr: float,
                           clock: _Clock, bar) -> dict:
        """One evaluation: the metrics line, the best weights, the checkpoint and the curves. Returns the record."""
        cfg, d, out = self.cfg, self.dist, Path(self.cfg.out)
        window.all_reduce(d)  # the logged training figures are those of the global batch
        images_per_s = clock.lap(window.images)
        val = self._evaluate(s)
        state.seconds = clock.elapsed()
        record = {"step": step, "epoch": round(step / s.batches.steps_per_epoch, 3), "lr": lr,
                  "train_loss": window.loss, "train_error": window.error,
                  "val_error": val["top1_error"], "val_top5_error": val["top5_error"],
                  "val_loss": val["loss"], "images_per_s": round(images_per_s, 1),
                  "seconds": round(state.seconds, 1)}
        window.reset()
        if s.recipe.schedule == "plateau":
            state.plateau_update(val["top1_error"], s.recipe.plateau_patience)
        improved = val["top1_error"] < state.best_val_error
        state.step = step
        if improved:
            state.best_val_error = val["top1_error"]
        if d.is_main:
            self.run.log(record)
            if self.board is not None:
                self.board.log(record)
            if improved:
                save_weights(out / "best", s.net, s.data.norm, dict(self._meta(s), step=step, accuracy={
                    "top1_error": val["top1_error"], "top5_error": val["top5_error"],
                    "split": s.data.info["eval_split"], "images": val["images"]}))
            self._checkpoint(s, state)
            plot_error_curves({s.net.config.name: self.run.metrics()}, out / "curves.png",
                              title=f"{s.net.config.name} on {cfg.data}", val_label=s.data.info["eval_split"])
            bar.write(f"step {step}/{s.recipe.iterations}  lr {lr:.3g}  train err {record['train_error']:.2f}%  "
                      f"{s.data.info['eval_split']} err {val['top1_error']:.2f}%  {images_per_s:.0f} img/s")
        clock.restart_lap()
        return record

    def _finish(self, s: _Session, state: RunState, step: int, record: dict | None, clock: _Clock) -> TrainResult:
        """The end of a run: the recipe's own test protocol if it has one, the last weights, the final line."""
        d = self.dist
        if record is None:  # a resumed run that had already finished, seen from a rank that keeps no log
            record = {"val_error": state.best_val_error, "val_top5_error": None}
        final = {"final": True, "rank": d.rank, "step": step, "best_val_error": state.best_val_error,
                 "val_error": record["val_error"], "val_top5_error": record["val_top5_error"],
                 "eval_split": s.data.info["eval_split"], "images_per_s": clock.images_per_s,
                 "model": s.net.config.name}
        if s.recipe.tta != "center":  # the recipe's own test protocol, on the last weights (beyond the paper)
            val = self._evaluate(s, tta=s.recipe.tta)
            final.update(tta=s.recipe.tta, val_error_tta=val["top1_error"], val_top5_error_tta=val["top5_error"])
        final["seconds"] = round(clock.elapsed(), 1)
        if d.is_main:
            save_weights(Path(self.cfg.out) / "last", s.net, s.data.norm, dict(self._meta(s), step=step, accuracy={
                "top1_error": record["val_error"], "top5_error": record["val_top5_error"],
                "split": s.data.info["eval_split"]}))
            self.run.log({k: v for k, v in final.items() if k != "rank"})
        shutdown(d)
        return TrainResult(**{k: v for k, v in final.items() if k != "final"})

    def _checkpoint(self, s: _Session, state: RunState) -> None:
        if self.dist.is_main:
            save_checkpoint(Path(self.cfg.out), {
                "model": s.net.state_dict(), "optimizer": s.optimizer.state_dict(), "state": asdict(state),
                "rng": rng_state(), "model_config": s.net.config.to_dict(), "config": asdict(self.cfg),
            })

    def _meta(self, s: _Session) -> dict:
        return {"classes": s.data.classes, "recipe": s.recipe.to_dict(), "data": self.cfg.data,
                "normalization_note": "per-pixel mean of the training images (Sec. 4.2)"}


def _shown(value) -> str:
    return "default" if value is None else str(value)


class _Clock:
    """The run's wall time (earlier sessions' and this one's) and the training rate between evaluations."""

    def __init__(self, seconds_before: float):
        self.seconds_before = seconds_before
        self.session_start = self.lap_start = time.perf_counter()
        self.images_per_s: float | None = None  # over the last lap; None before this session's first evaluation

    def elapsed(self) -> float:
        return self.seconds_before + time.perf_counter() - self.session_start

    def lap(self, images: int) -> float:
        self.images_per_s = images / (time.perf_counter() - self.lap_start)
        return self.images_per_s

    def restart_lap(self) -> None:
        self.lap_start = time.perf_counter()


class _Window:
    """Training loss and error since the last evaluation, kept on the device (no host sync per step)."""

    def __init__(self, device):
        self.device = device
        self.reset()

    def reset(self):
        self.pending: list[torch.Tensor] = []  # losses not yet checked for divergence
        self.loss_sum = torch.zeros((), device=self.device)
        self.wrong = torch.zeros((), device=self.device, dtype=torch.long)
        self.images = 0
        self.steps = 0

    def add(self, loss, logits, y):
        self.pending.append(loss.float())
        self.wrong += (logits.argmax(1) != y).sum()
        self.images += len(y)

    def first_nonfinite(self, step: int) -> int | None:
        """Check the losses since the last check (one host sync); the first non-finite one's step, or None."""
        if not self.pending:
            return None
        losses, self.pending = torch.stack(self.pending), []
        bad = ~torch.isfinite(losses)
        self.loss_sum += losses.sum()
        self.steps += len(losses)
        if bool(bad.any()):
            return step - len(losses) + int(bad.nonzero()[0]) + 1
        return None

    def all_reduce(self, d: Dist) -> None:
        if not d.enabled:
            return
        t = torch.stack([self.loss_sum.double() / d.world_size, self.wrong.double(),
                         torch.tensor(float(self.images), device=self.device, dtype=torch.float64)])
        dist.all_reduce(t)
        self.loss_sum, self.wrong, self.images = t[0].float(), t[1].long(), int(t[2])

    @property
    def loss(self) -> float:
        return float(self.loss_sum) / max(1, self.steps)

    @property
    def error(self) -> float:
        return 100.0 * float(self.wrong) / max(1, self.images)


def _progress(enabled: bool, total: int, start: int, name: str):

    return tqdm(total=total, initial=start, disable=not enabled, desc=f"train {name}", unit="it", dynamic_ncols=True,
                smoothing=0.05)


def train(cfg: TrainConfig) -> TrainResult:
    return Trainer(cfg).fit()
