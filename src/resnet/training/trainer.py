"""The training loop: SGD on a recipe's schedule, periodic evaluation, checkpoints that resume exactly.

One loop serves a laptop CPU and a multi-node GPU job: under ``torchrun`` the model is wrapped in
DistributedDataParallel and each rank trains on its slice of every global batch (the recipe's batch size and learning
rate are those of the whole job, whatever the number of processes).
"""

from __future__ import annotations

import math
import signal
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F

from ..data.normalize import Normalization
from ..errors import UsageError
from ..evaluation.evaluate import evaluate_images
from ..models import build_model
from ..plotting import plot_error_curves
from ..weights.format import save_weights
from .autotune import select_train_runtime
from .checkpoint import (CHECKPOINT, checkpoint_files, load_checkpoint, load_latest_checkpoint, rng_state,
                         save_checkpoint, set_rng_state)
from .distributed import (Dist, broadcast_buffers, broadcast_flag, convert_sync_batchnorm, init_distributed,
                          shutdown)
from .recipes import Recipe, epochs_to_iterations, resolve_recipe
from .run_dir import RunDir, changed_settings

IN_MEMORY_DATA = ("cifar10", "cifar100", "embedded", "synthetic")
FOLDER_DATA = ("imagefolder", "imagenet")


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
    eval_every: int | None = None  # iterations between evaluations (default: Recipe.eval_every)
    sync_bn: bool = False
    workers: int = 4
    deterministic: bool = False
    progress: bool = True
    check_every: int = 20  # iterations between loss checks (divergence, stop requests, progress figures)
    allow_changes: tuple[str, ...] = ()  # settings (of RESULT_SETTINGS) a --resume may change deliberately


# The settings that decide what a run computes. A resumed run keeps them, unless --allow-changes names them (recorded
# in config.json's history). Where the data lives, the device, precision, memory layout, compilation, workers and
# logging may change from one session to the next.
RESULT_SETTINGS = ("model", "shortcut", "variant", "num_classes", "zero_init_residual", "data", "protocol", "recipe",
                   "epochs", "iterations", "batch_size", "lr", "warmup", "seed", "sync_bn", "eval_every")


class Divergence(UsageError):
    pass


class StopRequested(Exception):
    def __init__(self, signum: int):
        self.signum = signum


class Trainer:
    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg
        choice = select_train_runtime(cfg)  # measured on CPU unless named or set by flags; cached
        self.rt = choice.runtime
        self.dist: Dist = init_distributed(self.rt.device.type)
        if self.dist.is_main:
            print(f"resnet train: runtime {choice.name}: {choice.reason}", flush=True)
        if self.dist.enabled and self.rt.device.type == "cuda":
            self.rt = replace(self.rt, device=torch.device("cuda", self.dist.local_rank))
        if cfg.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
            torch.backends.cudnn.benchmark = False
        elif self.rt.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        self.run = RunDir(cfg.out, enabled=self.dist.is_main)
        self._signal = 0

    # ---- set-up -------------------------------------------------------------------------------------------------
    def _load_data(self):
        cfg = self.cfg
        if cfg.protocol not in ("val", "test"):
            raise UsageError(f"unknown protocol {cfg.protocol!r}; choose val (45k/5k) or test (50k/10k)")
        if cfg.data in IN_MEMORY_DATA:
            from ..data.cifar import load_split
            from ..data.batches import InMemoryBatches

            train_split, eval_split = ("train", "val") if cfg.protocol == "val" else ("trainval", "test")
            train = load_split(cfg.data, cfg.data_dir, train_split)
            held_out = load_split(cfg.data, cfg.data_dir, eval_split)
            # Sec. 4.2: the per-pixel mean of the training images is subtracted.
            norm = Normalization.mean_image(train.images)

            def batches(batch_size: int, channels_last: bool):
                return InMemoryBatches(train.images, train.labels, norm, batch_size, seed=cfg.seed,
                                       device=self.rt.device, rank=self.dist.rank, world_size=self.dist.world_size,
                                       channels_last=channels_last)

            def evaluate(net, tta: str = "center"):
                return evaluate_images(net, norm, held_out.images, held_out.labels, device=self.rt.device,
                                       autocast_dtype=self.rt.autocast_dtype, tta=tta, rank=self.dist.rank,
                                       world_size=self.dist.world_size)

            return train.classes, norm, batches, evaluate, {"train_images": len(train.images),
                                                            "eval_images": len(held_out.images),
                                                            "eval_split": eval_split}
        if cfg.data in FOLDER_DATA:
            from ..data.imagefolder import training_source

            return training_source(cfg, self.rt, self.dist)
        raise UsageError(f"unknown dataset {cfg.data!r}; choose one of: {', '.join(IN_MEMORY_DATA + FOLDER_DATA)}")

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
        if self.dist.is_main:
            print(f"resnet train: {'warning: ' if warning else ''}{message}", flush=True,
                  file=sys.stderr if warning else sys.stdout)

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
    def fit(self) -> dict:
        """Train the run in ``cfg.out``, or continue it, as its one writer (rank 0 holds the run's lock)."""
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
            return self._fit()
        finally:
            self.run.unlock()

    def _fit(self) -> dict:
        cfg, rt, d = self.cfg, self.rt, self.dist
        ckpt_path = Path(cfg.out) / CHECKPOINT
        ckpt, previous_config, history = self._open_run()
        resume = ckpt is not None

        classes, norm, make_batches, evaluate_shard, data_info = self._load_data()

        def evaluate(net, **kw) -> dict:  # every rank evaluates its share of the held-out images, with rank 0's BN
            broadcast_buffers(d, net)     # statistics (DDP leaves each rank its own until the next forward)
            return evaluate_shard(net, **kw)

        torch.manual_seed(cfg.seed)  # identical initial weights on every rank
        net = build_model(cfg.model, num_classes=cfg.num_classes or len(classes), shortcut=cfg.shortcut,
                          variant=cfg.variant, zero_init_residual=cfg.zero_init_residual)
        if net.config.num_classes < len(classes):
            raise UsageError(f"--num-classes {net.config.num_classes} is fewer than the {len(classes)} classes of the data")
        net = rt.prepare(net)
        if d.enabled and cfg.sync_bn:
            net = convert_sync_batchnorm(net, rt.device.type)

        default_recipe = resolve_recipe(cfg.recipe, net.config.family, net.config.depth, batch_size=cfg.batch_size)
        if default_recipe.tta != "center" and cfg.data not in IN_MEMORY_DATA:
            raise UsageError(f"the {cfg.recipe!r} recipe ends with the CIFAR test protocol {default_recipe.tta!r}; "
                             f"use it on {', '.join(IN_MEMORY_DATA)}, or --recipe paper|step on image folders")
        batches = make_batches(default_recipe.batch_size, rt.channels_last)
        iterations = cfg.iterations or (epochs_to_iterations(cfg.epochs, batches.steps_per_epoch) if cfg.epochs else None)
        recipe = resolve_recipe(cfg.recipe, net.config.family, net.config.depth, iterations=iterations,
                                batch_size=cfg.batch_size, lr=cfg.lr, warmup=cfg.warmup)
        # A resumed run keeps its cadence unless --eval-every says otherwise.
        eval_every = (cfg.eval_every or (previous_config or {}).get("eval_every")
                      or recipe.eval_every(batches.steps_per_epoch))

        optimizer = torch.optim.SGD(net.parameters(), lr=recipe.lr, momentum=recipe.momentum,
                                    weight_decay=recipe.weight_decay, nesterov=recipe.nesterov)
        # "seconds": wall time of the run so far (steps, evaluations, checkpoints), summed over resumed sessions.
        state = {"step": 0, "best_val_error": math.inf, "plateau_drops": 0, "plateau_best": math.inf,
                 "plateau_bad": 0, "seconds": 0.0}
        if resume:
            if ckpt["model_config"] != net.config.to_dict():
                raise UsageError(f"{ckpt_path} is a checkpoint of {ckpt['model_config']['name']} "
                                 f"({ckpt['model_config']}), not of {net.config.name}; use the same model options")
            net.load_state_dict(ckpt["model"])
            optimizer.load_state_dict(ckpt["optimizer"])
            state.update(ckpt["state"])
            set_rng_state(ckpt["rng"])
        self.run.truncate_metrics(state["step"])  # a fresh start drops the records of a run that died unsaved

        previous = [r for r in self.run.metrics() if not r.get("final")] if resume and d.is_main else []
        record = previous[-1] if previous else None
        self.run.write_config({"config": asdict(cfg), "recipe": recipe.to_dict(), "model": net.config.to_dict(),
                               "runtime": rt.to_dict(), "world_size": d.world_size, "data": data_info,
                               "classes": classes, "eval_every": eval_every, "resumed_at": state["step"] or None,
                               **({"history": history} if history else {})})

        train_model = net
        if d.enabled:
            train_model = torch.nn.parallel.DistributedDataParallel(
                train_model, device_ids=[rt.device.index] if rt.device.type == "cuda" else None)
        train_model = rt.compile_model(train_model)  # compiled if the runtime compiles, eager if compiling fails

        meta = {"classes": classes, "recipe": recipe.to_dict(), "data": cfg.data,
                "normalization_note": "per-pixel mean of the training images (Sec. 4.2)"}

        def checkpoint():
            if d.is_main:
                save_checkpoint(Path(cfg.out), {
                    "model": net.state_dict(), "optimizer": optimizer.state_dict(), "state": dict(state),
                    "rng": rng_state(), "model_config": net.config.to_dict(), "config": asdict(cfg),
                })

        self._install_signal_handlers()
        start, total = state["step"], recipe.iterations
        stream = batches.iterate(start)
        window = _Window(rt.device)
        bar = _progress(cfg.progress and d.is_main, total, start, net.config.name)
        t_last, images_per_s = time.perf_counter(), None
        t_session, seconds_before = t_last, state["seconds"]

        def elapsed() -> float:  # the run's wall time: earlier sessions' and this one's
            return seconds_before + time.perf_counter() - t_session

        step = start
        try:
            while step < total:
                lr = recipe.lr_at(step, state["plateau_drops"])
                for g in optimizer.param_groups:
                    g["lr"] = lr
                x, y = next(stream)
                with rt.autocast():
                    logits = train_model(x)
                    loss = F.cross_entropy(logits, y, label_smoothing=recipe.label_smoothing)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                window.add(loss.detach(), logits.detach(), y)
                step += 1
                bar.update(1)

                at_eval = step % eval_every == 0 or step == total
                if step % cfg.check_every == 0 or at_eval:
                    bad_step = window.first_nonfinite(step)
                    if broadcast_flag(d, bad_step is not None, rt.device):
                        last = load_checkpoint(ckpt_path)["state"]["step"] if ckpt_path.exists() else None
                        raise Divergence(
                            f"loss became non-finite at step {bad_step or step}; stopped without saving; "
                            + (f"the last good checkpoint is {ckpt_path} (step {last})" if last is not None
                               else "no checkpoint was saved yet")
                            + "; lower the learning rate (--lr) or warm up (e.g. --recipe paper on deep nets)")
                    if broadcast_flag(d, bool(self._signal), rt.device):
                        raise StopRequested(self._signal or signal.SIGTERM)
                    bar.set_postfix(loss=f"{window.loss:.3f}", err=f"{window.error:.1f}%", lr=f"{lr:.3g}")

                if at_eval:
                    window.all_reduce(d)  # the logged training figures are those of the global batch
                    now = time.perf_counter()
                    images_per_s = window.images / (now - t_last)
                    val = evaluate(net)
                    state["seconds"] = elapsed()
                    record = {"step": step, "epoch": round(step / batches.steps_per_epoch, 3), "lr": lr,
                              "train_loss": window.loss, "train_error": window.error,
                              "val_error": val["top1_error"], "val_top5_error": val["top5_error"],
                              "val_loss": val["loss"], "images_per_s": round(images_per_s, 1),
                              "seconds": round(state["seconds"], 1)}
                    window.reset()
                    if recipe.schedule == "plateau":
                        _plateau_update(state, val["top1_error"], recipe.plateau_patience)
                    improved = val["top1_error"] < state["best_val_error"]
                    state["step"] = step
                    if improved:
                        state["best_val_error"] = val["top1_error"]
                    if d.is_main:
                        self.run.log(record)
                        if improved:
                            save_weights(Path(cfg.out) / "best", net, norm, dict(meta, step=step, accuracy={
                                "top1_error": val["top1_error"], "top5_error": val["top5_error"],
                                "split": data_info["eval_split"], "images": val["images"]}))
                        checkpoint()
                        plot_error_curves({net.config.name: self.run.metrics()}, Path(cfg.out) / "curves.png",
                                          title=f"{net.config.name} on {cfg.data}", val_label=data_info["eval_split"])
                    bar.write(f"step {step}/{total}  lr {lr:.3g}  train err {record['train_error']:.2f}%  "
                              f"{data_info['eval_split']} err {val['top1_error']:.2f}%  {images_per_s:.0f} img/s") \
                        if d.is_main else None
                    t_last = time.perf_counter()
        except StopRequested as stop:
            state["step"] = step
            state["seconds"] = elapsed()
            checkpoint()
            bar.close()
            name = signal.Signals(stop.signum).name
            if d.is_main:
                print(f"resnet train: {name} received; saved a checkpoint at step {step} in {cfg.out}; "
                      f"continue with --resume")
            shutdown(d)
            return {"stopped": True, "rank": d.rank, "step": step, "exit_code": 128 + stop.signum}
        finally:
            bar.close()

        if record is None:  # a resumed run that had already finished, seen from a rank that keeps no log
            record = {"val_error": state["best_val_error"], "val_top5_error": None}
        final = {"final": True, "rank": d.rank, "step": step, "best_val_error": state["best_val_error"],
                 "val_error": record["val_error"], "val_top5_error": record["val_top5_error"],
                 "eval_split": data_info["eval_split"], "images_per_s": images_per_s, "model": net.config.name}
        if recipe.tta != "center":  # the recipe's own test protocol, on the last weights (beyond the paper)
            val = evaluate(net, tta=recipe.tta)
            final.update(tta=recipe.tta, val_error_tta=val["top1_error"], val_top5_error_tta=val["top5_error"])
        final["seconds"] = round(elapsed(), 1)
        if d.is_main:
            save_weights(Path(cfg.out) / "last", net, norm, dict(meta, step=step, accuracy={
                "top1_error": record["val_error"], "top5_error": record["val_top5_error"],
                "split": data_info["eval_split"]}))
            self.run.log({k: v for k, v in final.items() if k != "rank"})
        shutdown(d)
        return final


def _shown(value) -> str:
    return "default" if value is None else str(value)


def _plateau_update(state: dict, val_error: float, patience: int) -> None:
    """Sec. 3.4: divide the learning rate by 10 when the error plateaus."""
    if val_error < state["plateau_best"] - 1e-3:
        state["plateau_best"], state["plateau_bad"] = val_error, 0
    else:
        state["plateau_bad"] += 1
        if state["plateau_bad"] >= patience:
            state["plateau_drops"] += 1
            state["plateau_bad"] = 0


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
        import torch.distributed as dist

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
    from tqdm import tqdm

    return tqdm(total=total, initial=start, disable=not enabled, desc=f"train {name}", unit="it", dynamic_ncols=True,
                smoothing=0.05)


def train(cfg: TrainConfig) -> dict:
    return Trainer(cfg).fit()
