"""Tables 2-4 (ImageNet): ready-made run configurations for a GPU cluster.

Each configuration is one ``torchrun ... -m resnet train`` line (the paper's recipe, Sec. 3.4) and one ``resnet eval``
line per test protocol (10-crop for Tables 2-3, multi-scale fully-convolutional for Table 4). The command prints them
and validates them (every net builds; parameter counts match torchvision's); ``--launch`` runs them one after the
other (at the smoke budget, the first configuration's run and test in this process: a check of the pipeline). Finished
runs in the runs folder are read back into the report.
"""

from __future__ import annotations

import collections
import json
import logging
import re
import shlex
import subprocess
import sys
import threading
from pathlib import Path

from ..data.sources import data_source
from ..errors import UsageError
from ..evaluation.classes import match_classes, relabel
from ..evaluation.evaluator import evaluator
from ..models import build_model, count_params
from ..reporting.report import table, write_outputs
from ..runs.spec import Options
from ..runs.store import is_finished
from ..runtime import resolve_runtime
from ..training.trainer import TrainConfig, train
from ..weights.importers import load_any
from . import paper

logger = logging.getLogger("resnet.experiments")  # the launcher's lines ("[reproduce] ..."), shown as they are

CONFIGS = {
    # Table 2: plain vs residual 18/34, option A (zero-padding shortcuts, no extra parameters).
    "imagenet-depth": [("plain18", None), ("plain34", None), ("resnet18", "A"), ("resnet34", "A")],
    # Table 3/4: ResNet-34 A/B/C, then the bottleneck nets with option B.
    "imagenet-shortcuts": [("resnet34", "A"), ("resnet34", "B"), ("resnet34", "C"), ("resnet50", "B"),
                           ("resnet101", "B"), ("resnet152", "B")],
}
GPUS = 8  # per node; the recipe's batch (256) is global, whatever the number of processes


def run_key(model: str, shortcut: str | None, opts: Options) -> str:
    return f"{model}-{shortcut or 'plain'}-{opts.budget}-{opts.data}"


def commands(model: str, shortcut: str | None, opts: Options) -> dict[str, list[str]]:
    out = str(opts.runs_dir / run_key(model, shortcut, opts))
    train = ["torchrun", f"--nproc_per_node={GPUS}", "-m", "resnet", "train", "--model", model, "--data", opts.data,
             "--data-dir", opts.data_dir or "IMAGENET_DIR", "--recipe", "paper", "--out", out]
    if shortcut:
        train += ["--shortcut", shortcut]
    if opts.budget == "smoke":
        train = [sys.executable, "-m", "resnet", *train[4:], "--iterations", "1", "--batch-size", "2",
                 "--eval-every", "1", "--workers", "0", "--no-progress", "--device", opts.device]
    evals = {tta: [sys.executable if opts.budget == "smoke" else "resnet", *(["-m", "resnet"] if opts.budget == "smoke"
                                                                            else []),
                   "eval", "--weights", out, "--data", opts.data, "--data-dir", opts.data_dir or "IMAGENET_DIR",
                   "--tta", tta, "--json", *(["--workers", "0"] if opts.budget == "smoke" else [])]
             for tta in (("10crop", "multiscale") if opts.budget != "smoke" else ("center",))}
    return {"train": train, **{f"eval_{k}": v for k, v in evals.items()}}


def imagenet_experiment(opts: Options) -> None:
    if not {"10crop", "multiscale"} <= set(data_source(opts.data).protocols):  # the tests of Tables 2-4
        raise UsageError(f"{opts.name} trains ImageNet nets: pass --data imagenet --data-dir DIR (or --data imagefolder "
                         f"for a small folder), not --data {opts.data}")
    configs = CONFIGS[opts.name]
    rows, metrics = [], {}
    for model, shortcut in configs:
        net = build_model(model, shortcut=shortcut) if shortcut else build_model(model)
        params = count_params(net)
        ref_params = paper.IMAGENET_PARAMS.get(model) if (shortcut == "B" or net.config.plain) else None
        cmds = commands(model, shortcut, opts)
        key = run_key(model, shortcut, opts)
        metrics[key] = {"model": model, "shortcut": shortcut, "params": params, "commands":
                        {k: shlex.join(v) for k, v in cmds.items()}}
        # At the smoke budget only the first configuration is launched: it checks the pipeline, not the table.
        if opts.launch and opts.budget == "smoke" and (model, shortcut) == configs[0]:
            metrics[key]["eval_center"] = smoke_run(model, shortcut, opts, opts.runs_dir / key)
        elif opts.launch and opts.budget != "smoke":
            metrics[key].update(launch(cmds, opts.runs_dir / key))
        t2 = paper.IMAGENET_TABLE2.get((model, shortcut))
        t3 = paper.IMAGENET_TABLE3.get((model, shortcut))
        t4 = paper.IMAGENET_TABLE4.get((model, shortcut))
        ours = metrics[key].get("eval_10crop") or metrics[key].get("eval_center") or {}
        rows.append([model, shortcut or "plain", f"{params:,}", f"{ref_params:,}" if ref_params else "-",
                     f"{ours['top1_error']:.2f} / {ours['top5_error']:.2f}" if ours else "not run",
                     f"{t2:.2f}" if t2 else "-", f"{t3[0]:.2f} / {t3[1]:.2f}" if t3 else "-",
                     f"{t4[0]:.2f} / {t4[1]:.2f}" if t4 else "-"])
    title = {"imagenet-depth": "Table 2: plain vs residual 18/34 on ImageNet",
             "imagenet-shortcuts": "Tables 3-4: shortcut options and deeper bottleneck nets on ImageNet"}[opts.name]
    cmd_lines = [line for m in metrics.values() for line in m["commands"].values()]
    body = [
        "Configurations for a GPU cluster (one node of 8 GPUs per run; the recipe's batch 256 is global). "
        + ("The runs were launched; results below." if opts.launch else
           "Nothing was trained here: the configurations were validated (every net builds, parameters counted) "
           "and the command lines written out; run them, or re-run this command with `--launch`."), "",
        f"- Data: `{opts.data}` in `{opts.data_dir or 'IMAGENET_DIR'}`; the paper reports the ILSVRC 2012 "
        "validation set (10-crop for Tables 2-3, multi-scale fully-convolutional for Table 4).",
        f"- Budget: `{opts.budget}` ({'1 iteration of batch 2: checks the pipeline' if opts.budget == 'smoke' else 'the paper recipe, Sec. 3.4: batch 256, lr 0.1 /10 on plateaus, up to 60e4 iterations'}).",
        "", table(["model", "shortcut", "params (ours)", "params (torchvision)", "ours top-1 / top-5 %",
                   "paper Table 2 top-1 %", "paper Table 3 top-1 / top-5 %", "paper Table 4 top-1 / top-5 %"], rows),
        "", "Command lines:", "", "```", *cmd_lines, "```",
    ]
    write_outputs(opts, title, body, metrics, {"configs": configs})


def launch(cmds: dict[str, list[str]], path: Path) -> dict[str, dict]:
    """Run a configuration's command lines, one after the other: its training (resumed from its checkpoint, skipped
    when finished), then each test; returns each test's result (``resnet eval --json``'s line)."""
    if not is_finished(path):
        resume = ["--resume"] if (path / "checkpoint.pt").exists() else []
        logger.info(f"[reproduce] {shlex.join(cmds['train'] + resume)}")
        _execute(cmds["train"] + resume, echo=True)
    results = {}
    for name, cmd in cmds.items():
        if name.startswith("eval_"):
            logger.info(f"[reproduce] {shlex.join(cmd)}")
            results[name] = _last_json(_execute(cmd))
    return results


def smoke_run(model: str, shortcut: str | None, opts: Options, path: Path) -> dict:
    """The smoke budget's launch, in this process: what its two command lines ask (``commands``), by calling the
    trainer and the evaluator: one iteration of batch 2, then the centre-crop test of the last weights."""
    if not is_finished(path):
        train(TrainConfig(model=model, shortcut=shortcut, data=opts.data, data_dir=opts.data_dir, recipe="paper",
                          out=str(path), resume=(path / "checkpoint.pt").exists(), iterations=1, batch_size=2,
                          eval_every=1, workers=0, progress=False, device=opts.device))
    weights, source = load_any(path), data_source(opts.data)
    rt = resolve_runtime("auto", "auto", None, False)  # as `resnet eval` resolves it: one pass, nothing tuned
    net = rt.prepare(weights.model).eval()
    data = source.open("val", opts.data_dir, own_classes=True)
    labels = match_classes(data.classes, weights.meta.get("classes"), net.config.num_classes,
                           where=source.where("val", opts.data_dir), weights=f"the weights {path}")
    result = evaluator(source, relabel(data, labels), weights.normalization, "val", device=rt.device,
                       autocast_dtype=rt.autocast_dtype, channels_last=rt.channels_last)(net, "center")
    return dict(result, model=net.config.name, data=source.name, split="val", weights=str(path),
                precision=rt.precision, tta="center")


def _execute(cmd: list[str], echo: bool = False) -> str:
    """Run a command line and return what it printed on stdout (also shown as it comes when ``echo``). A failure is a
    one-line :class:`UsageError` carrying the command's own error line (under torchrun, the worker's), not the
    launcher's traceback."""
    try:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1)
    except OSError as e:
        raise UsageError(f"cannot run {cmd[0]}: {e.strerror or e}; install it, or run the printed command lines "
                         "yourself") from None
    # stderr: read on a thread (a full pipe would block the child); a progress bar's updates are lines here too
    # (universal newlines), so the last ones are kept, not the whole run's.
    tail: collections.deque[str] = collections.deque(maxlen=200)
    reader = threading.Thread(target=tail.extend, args=(proc.stderr,), daemon=True)
    reader.start()
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if echo:
            logger.info(line.rstrip("\n"))
    rc = proc.wait()
    reader.join()
    if rc:
        raise UsageError(_failure(cmd, rc, list(tail)))
    return "".join(lines)


def _failure(cmd: list[str], rc: int, stderr: list[str]) -> str:
    """One line: which command failed and the error line it printed (``resnet CMD: error: ...``), else its last."""
    lines = [line.strip() for line in stderr if line.strip()]
    own = [line for line in lines if re.match(r"resnet \w+: (error|interrupted)", line)]
    said = own[-1] if own else (lines[-1] if lines else "it printed nothing on stderr")
    what = next((cmd[i + 1] for i, w in enumerate(cmd[:-1]) if w == "resnet"), cmd[0])
    return f"the {what} command failed (exit status {rc}): {said}"


def _last_json(text: str) -> dict:
    """The last line of ``text`` that is a JSON object (``resnet eval --json`` prints one)."""
    for line in reversed(text.strip().splitlines()):
        try:
            return json.loads(line)
        except json.JSONDecodeError:
            continue
    return {}
