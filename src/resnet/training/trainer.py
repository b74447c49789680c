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
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from ..data.sources import names
from ..errors import Divergence, UsageError
from ..models import build_model
from ..reporting.plots import plot_error_curves
from ..runtime import configure_kernels
from ..weights.format import save_weights
from .runtime_choice import select_train_runtime
from .checkpoint import (CHECKPOINT, Checkpoint, RunState, checkpoint_files, load_latest_checkpoint, rng_state,
                         set_rng_state)
from .config import RESULT_SETTINGS, TrainConfig
from .data import TrainingData, load_training_data
from .distributed import Dist, broadcast_buffers, broadcast_flag, convert_sync_batchnorm, init_distributed, shutdown
from .meters import Clock, Window, progress_bar
from .metrics import Evaluation, Final
from .recipes import Recipe, resolve_recipe
from .run_dir import RunDir, changed_settings
from .step import build_sgd, set_lr, train_step
from .tensorboard import TensorBoard

log = logging.getLogger("resnet.train")


@dataclass(frozen=True)
class TrainResult:
    """What ``train`` returns: this rank, the step reached, and the run's final record (what its metrics.jsonl ends
    with); or, for a run a signal stopped after saving its checkpoint, the signal (the command line turns it into its
    exit status) and no final record."""
    rank: int
    step: int
    final: Final | None = None
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

    def _open_run(self) -> tuple[Checkpoint | None, dict | None, list]:
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
        before = (previous or {}).get("config") or (ckpt.config if ckpt else None) or {}
        changed = changed_settings(before, asdict(cfg), RESULT_SETTINGS)
        refused = {k: v for k, v in changed.items() if k not in allowed}
        if refused:
            diff = ", ".join(f"--{k.replace('_', '-')} {_shown(old)} -> {_shown(new)}"
                             for k, (old, new) in refused.items())
            raise UsageError(f"{cfg.out} holds a run with other settings ({diff}); resume with its settings, or pass "
                             f"--allow-changes {','.join(k.replace('_', '-') for k in refused)} to change them "
                             "deliberately")
        step = ckpt.state.step if ckpt else 0
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

    def _restore(self, s: _Session, ckpt: Checkpoint | None) -> tuple[RunState, Evaluation | None]:
        """The run state to start from (the checkpoint's, or a fresh one), with the net, optimiser and random
        generators set from the checkpoint; and the last evaluation record of the resumed run."""
        state = RunState()
        if ckpt is not None:
            if ckpt.model_config != s.net.config.to_dict():
                saved = ckpt.model_config or {}
                raise UsageError(f"{Path(self.cfg.out) / CHECKPOINT} is a checkpoint of {saved.get('name')} "
                                 f"({saved}), not of {s.net.config.name}; use the same model options")
            s.net.load_state_dict(ckpt.model)
            s.optimizer.load_state_dict(ckpt.optimizer)
            state = ckpt.state
            set_rng_state(ckpt.rng)
        self.run.truncate_metrics(state.step)  # a fresh start drops the records of a run that died unsaved
        return state, (self.run.metrics().last if ckpt and self.dist.is_main else None)

    def _write_config(self, s: _Session, state: RunState, history: list) -> None:
        self.run.write_config({"config": asdict(self.cfg), "recipe": s.recipe.to_dict(), "model": s.net.config.to_dict(),
                               "runtime": self.rt.to_dict(), "world_size": self.dist.world_size, "data": s.data.info,
                               "classes": s.data.classes, "eval_every": s.eval_every, "resumed_at": state.step or None,
                               **({"history": history} if history else {})})

    def _train(self, s: _Session, state: RunState, record: Evaluation | None) -> TrainResult:
        """The loop: one ``train_step`` per iteration on the recipe's schedule; loss checks every ``check_every``
        iterations; evaluation, weights, checkpoint and curves every ``eval_every``."""
        cfg, total = self.cfg, s.recipe.iterations
        stream = s.batches.iterate(state.step)
        window = Window(self.rt.device)
        bar = progress_bar(cfg.progress and self.dist.is_main, total, state.step, s.net.config.name)
        clock = Clock(state.seconds)
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
            return TrainResult(rank=self.dist.rank, step=step, stopped_by=stop.signum)
        finally:
            bar.close()
        return self._finish(s, state, step, record, clock)

    def _checkpoint_due(self, saved_at: float) -> bool:
        """A timed checkpoint between evaluations: a run killed without warning (``kill -9``, a lost machine) loses at
        most ``checkpoint_minutes`` of training. Every rank agrees (rank 0's clock decides)."""
        due = time.monotonic() - saved_at >= 60.0 * self.cfg.checkpoint_minutes
        return broadcast_flag(self.dist, due if self.dist.is_main else False, self.rt.device)

    def _check(self, window: Window, step: int) -> None:
        """Stop on a non-finite loss (every rank, if any rank saw one) or on a stop request (a signal)."""
        d, ckpt_path = self.dist, Path(self.cfg.out) / CHECKPOINT
        bad_step = window.first_nonfinite(step)
        if broadcast_flag(d, bad_step is not None, self.rt.device):
            last = Checkpoint.load(ckpt_path).state.step if ckpt_path.exists() else None
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

    def _evaluate_and_save(self, s: _Session, state: RunState, window: Window, step: int, lr: float,
                           clock: Clock, bar) -> Evaluation:
        """One evaluation: measure, advance the run state, then (rank 0) the metrics line, the best weights, the
        checkpoint and the curves. Returns the record."""
        record, val = self._measure(s, state, window, step, lr, clock)
        improved = self._advance(s, state, step, record.val_error)
        if self.dist.is_main:
            self._log(record)
            if improved:
                self._save_weights(s, "best", step, {"top1_error": val["top1_error"], "top5_error": val["top5_error"],
                                                     "split": s.data.info["eval_split"], "images": val["images"]})
            self._checkpoint(s, state)
            self._draw_curves(s)
            bar.write(f"step {step}/{s.recipe.iterations}  lr {lr:.3g}  train err {record.train_error:.2f}%  "
                      f"{s.data.info['eval_split']} err {record.val_error:.2f}%  {clock.images_per_s:.0f} img/s")
        clock.restart_lap()
        return record

    def _measure(self, s: _Session, state: RunState, window: Window, step: int, lr: float,
                 clock: Clock) -> tuple[Evaluation, dict]:
        """The evaluation's record (the training figures of the global batch since the last one, the held-out
        split's, the rate and the run's wall time), and the evaluator's result; the window starts over."""
        window.all_reduce(self.dist)  # the logged training figures are those of the global batch
        images_per_s = clock.lap(window.images)
        val = self._evaluate(s)
        state.seconds = clock.elapsed()
        record = Evaluation(step=step, epoch=round(step / s.batches.steps_per_epoch, 3), lr=lr,
                            train_loss=window.loss, train_error=window.error, val_error=val["top1_error"],
                            val_top5_error=val["top5_error"], val_loss=val["loss"],
                            images_per_s=round(images_per_s, 1), seconds=round(state.seconds, 1))
        window.reset()
        return record, val

    def _advance(self, s: _Session, state: RunState, step: int, val_error: float) -> bool:
        """The run state after an evaluation: its step, the plateau schedule, the best error. Whether it improved."""
        if s.recipe.schedule == "plateau":
            state.plateau_update(val_error, s.recipe.plateau_patience)
        improved = val_error < state.best_val_error
        state.step = step
        if improved:
            state.best_val_error = val_error
        return improved

    def _log(self, record: Evaluation | Final) -> None:
        self.run.log(record)
        if self.board is not None and isinstance(record, Evaluation):
            self.board.log(record)

    def _draw_curves(self, s: _Session) -> None:
        plot_error_curves({s.net.config.name: self.run.metrics()}, Path(self.cfg.out) / "curves.png",
                          title=f"{s.net.config.name} on {self.cfg.data}", val_label=s.data.info["eval_split"])

    def _finish(self, s: _Session, state: RunState, step: int, record: Evaluation | None,
                clock: Clock) -> TrainResult:
        """The end of a run: the recipe's own test protocol if it has one, the last weights, the final line."""
        d = self.dist
        if record is None:  # a resumed run that had already finished, seen from a rank that keeps no log
            record = Evaluation(step=step, val_error=state.best_val_error)
        images_per_s = clock.images_per_s
        tta = s.recipe.tta if s.recipe.tta != "center" else None
        val = self._evaluate(s, tta=tta) if tta else {}  # the recipe's own test protocol, on the last weights
        final = Final(step=step, val_error=record.val_error, best_val_error=state.best_val_error,
                      val_top5_error=record.val_top5_error, eval_split=s.data.info["eval_split"],
                      images_per_s=images_per_s, model=s.net.config.name, tta=tta,
                      val_error_tta=val.get("top1_error"), val_top5_error_tta=val.get("top5_error"),
                      seconds=round(clock.elapsed(), 1))
        if d.is_main:
            self._save_weights(s, "last", step, {"top1_error": final.val_error, "top5_error": final.val_top5_error,
                                                 "split": final.eval_split})
            self._log(final)
        shutdown(d)
        return TrainResult(rank=d.rank, step=step, final=final)

    def _save_weights(self, s: _Session, name: str, step: int, accuracy: dict) -> None:
        """``best`` or ``last``: the net in the project's weight format, with its classes, recipe and accuracy."""
        save_weights(Path(self.cfg.out) / name, s.net, s.data.norm, dict(self._meta(s), step=step, accuracy=accuracy))

    def _checkpoint(self, s: _Session, state: RunState) -> None:
        if self.dist.is_main:
            Checkpoint(model=s.net.state_dict(), optimizer=s.optimizer.state_dict(), state=state, rng=rng_state(),
                       model_config=s.net.config.to_dict(), config=asdict(self.cfg)).save(self.cfg.out)

    def _meta(self, s: _Session) -> dict:
        # The run's own number of evaluations (its interval may differ from the recipe's default): the weights'
        # metadata says how the run went. config.json keeps the recipe as asked, which a resume checks against.
        recipe = dict(s.recipe.to_dict(), evaluations=math.ceil(s.recipe.iterations / s.eval_every))
        return {"classes": s.data.classes, "recipe": recipe, "data": self.cfg.data,
                "normalization_note": "per-pixel mean of the training images (Sec. 4.2)"}


def _shown(value) -> str:
    return "default" if value is None else str(value)


def train(cfg: TrainConfig) -> TrainResult:
    return Trainer(cfg).fit()
