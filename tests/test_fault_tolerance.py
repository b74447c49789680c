"""Issue 7: distributed training equals single-process training, exact resume after kill -9, atomic checkpoints,
the divergence guard, refusal of malicious pickles, elastic restarts, graceful stop."""

from __future__ import annotations

import errno
import os
import pickle
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from resnet.errors import UsageError
from resnet.training.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from resnet.training.run_dir import read_metrics

# A tiny, fast, deterministic training job on the embedded CIFAR-10 subset (real images).
TINY = ["train", "--model", "resnet20", "--data", "embedded", "--batch-size", "32", "--iterations", "24",
        "--eval-every", "6", "--precision", "fp32", "--no-channels-last", "--deterministic", "--no-progress"]
ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")


def resnet(*args, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "resnet", *args], capture_output=True, text=True, env=ENV, **kw)


def final_weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "last.safetensors"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ref") / "run"
    r = resnet(*TINY, "--out", str(out))
    assert r.returncode == 0, r.stderr
    return out


def test_run_dir_contents(reference_run):
    for name in ("config.json", "metrics.jsonl", "checkpoint.pt", "best.safetensors", "best.json",
                 "last.safetensors", "curves.png"):
        assert (reference_run / name).exists(), name
    records = read_metrics(reference_run)
    assert [r["step"] for r in records if not r.get("final")] == [6, 12, 18, 24]
    assert records[-1]["final"] and records[-1]["step"] == 24
    for key in ("lr", "train_loss", "train_error", "val_error", "images_per_s"):
        assert key in records[0]


def test_kill9_then_resume_gives_identical_weights(reference_run, tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "resnet", *TINY, "--out", str(out)], env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (out / "checkpoint.pt").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    time.sleep(0.3 * torch.rand(()).item())  # a random moment after the first checkpoint
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    killed_at = load_checkpoint(out)["state"]["step"]
    assert killed_at < 24
    r = resnet(*TINY, "--out", str(out), "--resume")
    assert r.returncode == 0, r.stderr
    ref, resumed = final_weights(reference_run), final_weights(out)
    assert ref.keys() == resumed.keys()
    for k in ref:
        assert torch.equal(ref[k], resumed[k]), k
    steps = [r["step"] for r in read_metrics(out) if not r.get("final")]
    assert steps == [6, 12, 18, 24]  # no duplicated records after the resume


def test_existing_run_is_not_overwritten(reference_run):
    before = (reference_run / "checkpoint.pt").read_bytes()
    r = resnet(*TINY, "--out", str(reference_run))
    assert r.returncode == 2 and "--resume" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert (reference_run / "checkpoint.pt").read_bytes() == before


def test_checkpoint_of_another_model_is_refused(reference_run, tmp_path):
    out = tmp_path / "other"
    out.mkdir()
    (out / "checkpoint.pt").write_bytes((reference_run / "checkpoint.pt").read_bytes())
    r = resnet(*[a if a != "resnet20" else "resnet32" for a in TINY], "--out", str(out), "--resume")
    assert r.returncode == 2 and "checkpoint of resnet20" in r.stderr


def test_interrupted_save_keeps_previous_checkpoint(tmp_path, monkeypatch):
    save_checkpoint(tmp_path, {"step": 1, "w": torch.ones(3)})

    def crash(src, dst):  # the process dies between writing the temporary file and renaming it
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path, {"step": 2, "w": torch.zeros(3)})
    monkeypatch.undo()
    assert load_checkpoint(tmp_path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]  # no temporary file left behind


def test_full_disk_keeps_previous_checkpoint(tmp_path, monkeypatch):
    save_checkpoint(tmp_path, {"step": 1, "w": torch.ones(3)})
    real_open = open

    class FullDisk:
        def __init__(self, f):
            self.f = f

        def write(self, data):
            self.f.write(data[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    monkeypatch.setattr("builtins.open", lambda p, mode="r", *a, **k:
                        FullDisk(real_open(p, mode, *a, **k)) if "w" in mode else real_open(p, mode, *a, **k))
    with pytest.raises(CheckpointError, match="No space left on device.*previous checkpoint .* is intact"):
        save_checkpoint(tmp_path, {"step": 2, "w": torch.zeros(3)})
    monkeypatch.undo()
    assert load_checkpoint(tmp_path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]


class Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_checkpoint_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    with open(tmp_path / "checkpoint.pt", "wb") as f:
        pickle.dump({"step": 3, "evil": Payload(marker)}, f)
    with pytest.raises(CheckpointError, match="refusing to load"):
        load_checkpoint(tmp_path)
    assert not marker.exists()
    r = resnet(*TINY, "--out", str(tmp_path), "--resume")
    assert r.returncode == 2 and "refusing to load" in r.stderr and not marker.exists()


def test_truncated_checkpoint_is_a_clear_error(reference_run, tmp_path):
    (tmp_path / "checkpoint.pt").write_bytes((reference_run / "checkpoint.pt").read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_checkpoint(tmp_path)


def test_divergence_stops_with_the_step_and_keeps_last_good_checkpoint(tmp_path):
    out = tmp_path / "run"
    r = subprocess.run([sys.executable, "-c", DIVERGE, str(out)], capture_output=True, text=True, env=ENV)
    assert r.returncode == 2, r.stderr
    assert "non-finite at step 8" in r.stderr and "lower the learning rate" in r.stderr
    assert load_checkpoint(out)["state"]["step"] == 6  # the last good one, not overwritten


# Plants a NaN: from step 8 on, the inputs are NaN.
DIVERGE = """
import sys, torch
from resnet.data import batches
orig = batches.InMemoryBatches.batch
def batch(self, step):
    x, y = orig(self, step)
    return (x * float("nan") if step >= 7 else x), y
batches.InMemoryBatches.batch = batch
from resnet.cli import main
sys.exit(main(["train", "--model", "resnet20", "--data", "embedded", "--batch-size", "32", "--iterations", "24",
               "--eval-every", "6", "--precision", "fp32", "--no-progress", "--out", sys.argv[1]]))
"""


def test_sigterm_saves_a_checkpoint_then_resume_finishes(reference_run, tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "resnet", *TINY, "--eval-every", "100", "--out", str(out)],
                            env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (out / "config.json").exists() and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, stderr
    assert "SIGTERM received; saved a checkpoint" in stdout
    step = load_checkpoint(out)["state"]["step"]
    assert 0 < step < 24
    r = resnet(*TINY, "--eval-every", "100", "--out", str(out), "--resume")
    assert r.returncode == 0, r.stderr


def torchrun(*args, nproc=2, extra=()) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", *extra, "-m", "resnet", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=300)


def test_two_processes_syncbn_equal_one_process(tmp_path):
    # A small learning rate: early training at lr 0.1 amplifies float rounding differences (a different summation
    # order, as in two processes or even another thread count) by ~10x per step, which would drown the comparison.
    args = ["train", "--model", "resnet20", "--data", "embedded", "--batch-size", "32", "--iterations", "4",
            "--eval-every", "2", "--lr", "0.005", "--precision", "fp32", "--no-channels-last", "--no-progress"]
    single = resnet(*args, "--out", str(tmp_path / "one"))
    assert single.returncode == 0, single.stderr
    port = free_port()
    double = torchrun(*args, "--sync-bn", "--out", str(tmp_path / "two"),
                      extra=["--master_addr=127.0.0.1", f"--master_port={port}"])
    assert double.returncode == 0, double.stderr[-3000:]
    assert "FutureWarning" not in double.stderr  # the all-reduce BN uses no deprecated collective
    one, two = read_metrics(tmp_path / "one"), read_metrics(tmp_path / "two")
    for a, b in zip(one[:-1], two[:-1]):
        assert a["step"] == b["step"]
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)
    w1, w2 = final_weights(tmp_path / "one"), final_weights(tmp_path / "two")
    for k in w1:
        torch.testing.assert_close(w1[k], w2[k], rtol=1e-3, atol=1e-3 if "running" in k else 1e-4, msg=k)


def test_two_nodes_on_localhost(tmp_path):
    port = free_port()
    args = ["train", "--model", "resnet20", "--data", "embedded", "--batch-size", "16", "--iterations", "4",
            "--eval-every", "4", "--precision", "fp32", "--no-progress", "--out", str(tmp_path / "run")]
    procs = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=1",
                               f"--node_rank={i}", "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}",
                               "--rdzv-id=test", "-m", "resnet", *args], env=ENV,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs[0][1][-2000:] + outs[1][1][-2000:]
    assert read_metrics(tmp_path / "run")[-1]["step"] == 4


def test_elastic_restart_continues_from_checkpoint(tmp_path, reference_run):
    out = tmp_path / "run"
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=1", "--max-restarts=2",
                             "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}", "-m", "resnet", *TINY,
                             "--out", str(out)], env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (out / "checkpoint.pt").exists() and time.time() < deadline:
        time.sleep(0.05)
    workers = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
    assert workers, "no worker process found"
    for pid in workers:
        os.kill(int(pid), signal.SIGKILL)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr[-3000:]
    ref, restarted = final_weights(reference_run), final_weights(out)
    for k in ref:
        assert torch.equal(ref[k], restarted[k]), k
