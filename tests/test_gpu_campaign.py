"""``tools/gpu-campaign.sh`` (``resnet gpu-campaign``) on the CPU: two tiny real runs of the embedded data at the
``smoke`` budget, one process at a time on one thread. A deadline shorter than the work stops a run with its checkpoint
saved (exit 4); the same command, on the run folders unpacked from what the first call packed, resumes and finishes
both (exit 0); the summary parses, the packed runs stay under their size limit, and their weights load with the
project's loader as the nets named. What only a GPU shows (runs side by side on one GPU, torch.compile, CUDA graphs,
the 10-view test on CUDA) is not tested here.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from resnet.cli import main
from resnet.training.run_dir import LOCK
from resnet.weights.format import load_weights

ROOT = Path(__file__).resolve().parents[1]
MODELS = ("resnet20", "plain20")


def campaign(tmp_path: Path, runs: str, out: str, deadline: int, reserve: int = 15) -> tuple[int, str]:
    args = [str(ROOT / "tools" / "gpu-campaign.sh"), "--data", "embedded", "--budget", "smoke", "--iterations", "150",
            "--models", ",".join(MODELS), "--device", "cpu", "--jobs", "1", "--threads", "1",
            "--runs", str(tmp_path / runs), "--out", str(tmp_path / out), "--deadline", str(deadline),
            "--reserve", str(reserve)]
    env = dict(os.environ, PYTHON=sys.executable, OMP_NUM_THREADS="1")
    done = subprocess.run(args, capture_output=True, text=True, env=env, timeout=deadline + 60)
    return done.returncode, done.stdout + done.stderr


def unpack(tmp_path: Path, out: str, into: str) -> None:
    for name in json.loads((tmp_path / out / "summary.json").read_text())["packed"]:
        with tarfile.open(tmp_path / out / name) as tar:
            tar.extractall(tmp_path / into, filter="data")


def summary(tmp_path: Path, out: str) -> dict:
    s = json.loads((tmp_path / out / "summary.json").read_text())
    assert {r["model"] for r in s["runs"]} == set(MODELS)
    md = (tmp_path / out / "summary.md").read_text()
    assert "| ResNet-20 |" in md and "| plain-20 |" in md
    return s


class ClockAtTheStop:
    """The supervisor's clock (``gpu.time``): the real one until the first run holds its lock (its trainer saves on
    SIGTERM), then ``jump`` seconds later. The deadline then comes at a known point of the run, whatever the machine's
    speed: as it starts training, long before its last step; it stops at its next loss check (every 20 steps; the
    first, in practice: the supervisor looks every 50 ms) with its checkpoint."""

    def __init__(self, runs: Path, jump: float):
        self.runs, self.jump, self.offset = runs, jump, 0.0

    def sleep(self, seconds: float) -> None:
        time.sleep(min(seconds, 0.05))

    def monotonic(self) -> float:
        if not self.offset and any(lock.read_text().startswith("PID ") for lock in self.runs.glob(f"*/{LOCK}")):
            self.offset = self.jump  # the lock file names its holder once it is held (read, not locked: no race)
        return time.monotonic() + self.offset


def test_a_deadline_stops_with_a_checkpoint_and_the_same_command_finishes(tmp_path, monkeypatch):
    # Deadline 1000 s, reserve 400 s: the stop at 600 s, the kill at 800 s. The clock jumps to 650 s once the first run
    # holds its lock: it is sent SIGTERM and stops at a loss check with its checkpoint; the second run (one process at
    # a time) is not started.
    from resnet.campaign import gpu

    monkeypatch.setattr(gpu, "time", ClockAtTheStop(tmp_path / "runs", jump=650.0))
    rc = main(["gpu-campaign", "--data", "embedded", "--budget", "smoke", "--iterations", "150", "--models",
               ",".join(MODELS), "--device", "cpu", "--jobs", "1", "--threads", "1", "--runs", str(tmp_path / "runs"),
               "--out", str(tmp_path / "out1"), "--deadline", "1000", "--reserve", "400"])
    output = (tmp_path / "out1" / "log.txt").read_text()
    assert rc == 4, output
    first = summary(tmp_path, "out1")
    assert {r["model"]: r["state"] for r in first["runs"]} == {"resnet20": "stopped", "plain20": "not started"}, output
    step = first["runs"][0]["step"]
    assert step in range(20, 150, 20) and (tmp_path / "runs" / first["runs"][0]["run"] / "checkpoint.pt").is_file()
    assert f"stopped at the deadline with a checkpoint at step {step}" in output
    assert "plain-20: not started: the deadline came first" in output
    stopped = [r for r in first["runs"] if r["state"] == "stopped"]

    # The next job, on another machine: the runs come back from the packed files alone (the first folder is gone).
    unpack(tmp_path, "out1", "carried")
    # A deadline far beyond the work (the call ends when its runs do): both finish however slow the machine.
    rc, output = campaign(tmp_path, "carried", "out2", deadline=900)
    assert rc == 0, output
    second = summary(tmp_path, "out2")
    assert all(r["state"] == "finished" and r["step"] == 150 and r["val_error"] is not None for r in second["runs"])
    for r in stopped:  # resumed from the checkpoint, not started over
        config = json.loads((tmp_path / "carried" / r["run"] / "config.json").read_text())
        assert config["resumed_at"] == r["step"]

    # The output folder: the summary, the log and tar files under the size limit (--pack-mib, 15 MiB), plainly named.
    files = sorted((tmp_path / "out2").iterdir())
    assert {"summary.json", "summary.md", "log.txt"} <= {f.name for f in files}
    assert all(f.stat().st_size <= 15 * 2**20 for f in files if f.suffix == ".tar")
    assert all(re.fullmatch(r"[A-Za-z0-9._-]+", f.name) for f in files)
    unpack(tmp_path, "out2", "unpacked")
    for r in second["runs"]:
        weights = load_weights(tmp_path / "unpacked" / r["run"] / "last")
        assert weights.model.config.name == r["model"]
        assert weights.meta["step"] == 150


def test_the_ten_view_test_of_a_finished_run(tmp_path):
    """The 10-view test the GPU calls run on each finished run (on the CPU it is off: too slow to be worth it), here
    on a tiny run and 20 held-out images."""
    from resnet.data.sources import data_source
    from resnet.campaign.gpu_summary import TEN_VIEW, ten_view
    from resnet.runtime import resolve_runtime

    run = tmp_path / "run"
    assert main(["train", "--data", "embedded", "--iterations", "2", "--batch-size", "8", "--out", str(run),
                 "--device", "cpu", "--precision", "fp32", "--no-compile", "--no-progress"]) == 0
    held_out = data_source("embedded").open("val").subset(list(range(20)))
    result = ten_view(run, held_out, resolve_runtime("cpu", "fp32", compile=False))
    assert result["images"] == 20 and 0 <= result["top1_error"] <= 100
    assert json.loads((run / TEN_VIEW).read_text()) == result


def test_the_time_check_uses_measured_rates_and_scales_the_others(tmp_path):
    from resnet.campaign.gpu import estimate
    from resnet.runs.spec import Options

    opts = Options(name="gpu-campaign", budget="paper", data="synthetic", runs=str(tmp_path), device="cpu",
                   precision="fp32")
    paths = {m: tmp_path / m for m in ("resnet20", "resnet110")}
    paths["resnet20"].mkdir()
    (paths["resnet20"] / "metrics.jsonl").write_text("".join(
        json.dumps({"step": s, "seconds": s * 0.002, "val_error": 50.0, "train_error": 50.0}) + "\n" for s in (400, 800)))
    lines = estimate(["resnet20", "resnet110"], paths, opts, seconds=300)
    assert "127,200 iterations" in lines[0]  # 63,200 + 64,000 left
    # ResNet-20: 63,200 iterations at the measured 2 ms, 126 s; ResNet-110 at 2 ms x its 6.2x multiply-adds: ~790 s
    assert "resnet110 will not finish" in lines[1] and "the longest run needs 79" in lines[1]


@pytest.mark.parametrize("args, needle", [
    (["--budget", "nope"], "unknown budget"),
    (["--models", "resnet50"], "not a CIFAR net"),
    (["--deadline", "30", "--reserve", "40"], "--reserve"),
    (["--data", "cifar10", "--data-dir", "{tmp}/no-data"], "no cifar10 data"),  # in tmp: nothing made outside it
    (["--device", "nope"], "unknown device"),
])
def test_bad_input_is_one_line_exit_2(args, needle, tmp_path, capsys):
    base = ["gpu-campaign", "--data", "embedded", "--device", "cpu", "--out", str(tmp_path / "out"),
            "--runs", str(tmp_path / "runs"), "--deadline", "300"]
    assert main(base + [a.replace("{tmp}", str(tmp_path)) for a in args]) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("missing", ["--out", "--deadline"])
def test_no_output_folder_or_deadline_is_one_line_exit_2(missing, capsys, tmp_path):
    """Where the results go and the job's time limit are the caller's to say: neither has a default."""
    args = {"--out": str(tmp_path / "out"), "--deadline": "300"}
    del args[missing]
    with pytest.raises(SystemExit) as stop:
        main(["gpu-campaign", "--data", "embedded", "--device", "cpu", "--runs", str(tmp_path / "runs"),
              *[x for kv in args.items() for x in kv]])
    err = capsys.readouterr().err.strip()
    assert stop.value.code == 2 and missing in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("rc", [0, -signal.SIGTERM])
def test_a_run_that_finished_as_the_stop_came_is_reported_finished(tmp_path, rc):
    """A SIGTERM sent as a run ends can land during the interpreter's shutdown, where Python's default handler kills
    the process (exit -15) after the last weights and the final record were written: the run is finished, not lost.
    Without the final record the same exit is a kill without saving."""
    from resnet.campaign.gpu import Worker, _outcome
    from resnet.runs.spec import RunSpec

    w = Worker(RunSpec("resnet20"), tmp_path, graphs=False, stop_sent=True)
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text(json.dumps({"step": 150, "seconds": 9.0, "val_error": 80.0, "train_error": 85.0}) + "\n")
    assert _outcome(w, rc).startswith("failed" if rc == 0 else "killed at the deadline without saving")
    metrics.write_text(metrics.read_text() + json.dumps(
        {"final": True, "step": 150, "val_error": 80.0, "eval_split": "val"}) + "\n")
    assert _outcome(w, rc) == "finished: 150 iterations, val error 80.00%"
