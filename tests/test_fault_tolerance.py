"""Distributed training equals single-process training, exact resume after kill -9, atomic checkpoints,
the divergence guard, refusal of malicious pickles, elastic restarts, graceful stop.
Also: --resume starts a run that has no checkpoint yet, one writer per run directory, evaluation sharded across
ranks, checksummed checkpoints with a fallback to the previous one, resumes with other settings refused or recorded."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import pickle
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from resnet.training.checkpoint import (Checkpoint, CheckpointError, CorruptCheckpoint, load_checkpoint,
                                       load_latest_checkpoint, save_checkpoint)
from resnet.training.metrics import read_metrics

# A tiny, fast, deterministic training job on the embedded CIFAR-10 subset (real images).
TINY = ["train", "--model", "resnet20", "--data", "embedded", "--batch-size", "32", "--iterations", "24",
        "--eval-every", "6", "--precision", "fp32", "--no-channels-last", "--deterministic", "--no-progress"]
ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")


def resnet(*args, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "resnet", *args], capture_output=True, text=True, env=ENV, **kw)


def refused(capsys, *args) -> str:
    """Runs a command that must be refused before any training, in this process (no start-up of its own; without
    --deterministic, a process-wide setting): its one line of stderr."""
    from resnet.cli import main

    assert main([a for a in args if a != "--deterministic"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    return err


def final_weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "last.safetensors"))


@contextlib.contextmanager
def reserved_port():
    """A local port held for the caller: bound (not listening) with SO_REUSEADDR for as long as the block runs, so
    that no other process is given it, while the rendezvous server (which binds with SO_REUSEADDR too) can listen on
    it. A port found free and released before use could be taken in between."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", 0))
        yield s.getsockname()[1]


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
    assert [e.step for e in records.evaluations] == [6, 12, 18, 24]
    assert records.final.step == 24
    first = records.evaluations[0]
    assert None not in (first.lr, first.train_loss, first.train_error, first.val_error, first.images_per_s)


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = final_weights(a), final_weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while not path.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert path.exists(), f"{path} did not appear"


@pytest.mark.parametrize("moment", ["before", "after"])
def test_kill9_then_resume_gives_identical_weights(reference_run, tmp_path, moment):
    """Killed at a random moment before the first checkpoint (only config.json written) or after it, the same
    command with --resume ends with the uninterrupted run's weights, bit for bit."""
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "resnet", *TINY, "--out", str(out)], env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(out / ("config.json" if moment == "before" else "checkpoint.pt"), proc)
    time.sleep(0.3 * torch.rand(()).item())  # a random moment before (6 steps and an evaluation away) or after it
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    if moment == "before":
        assert not (out / "checkpoint.pt").exists()
    else:
        assert Checkpoint.load(out).state.step < 24
    r = resnet(*TINY, "--out", str(out), "--resume")
    assert r.returncode == 0, r.stderr
    said = r.stdout  # the runtime line, then what the resume did
    assert ("no checkpoint yet; starting" in said) if moment == "before" else ("resuming" in said), r.stdout
    assert_same_weights(reference_run, out)
    steps = [e.step for e in read_metrics(out).evaluations]
    assert steps == [6, 12, 18, 24]  # no duplicated records after the resume


def test_a_second_writer_is_refused_until_the_first_dies(tmp_path):
    """The run directory's lock: a second `--resume` while the first run lives is refused, naming its PID; once the
    first has died of kill -9 (no chance to clean up), the same command runs."""
    out = tmp_path / "run"
    args = [*TINY, "--iterations", "2", "--eval-every", "100", "--out", str(out), "--resume"]
    first = subprocess.Popen([sys.executable, "-m", "resnet", *args], env=ENV, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        wait_for(out / "config.json", first)
        first.send_signal(signal.SIGSTOP)  # alive and holding the lock for as long as the test needs
        second = resnet(*args)
        assert second.returncode == 2, second.stderr
        assert f"PID {first.pid}" in second.stderr and len(second.stderr.strip().splitlines()) == 1, second.stderr
    finally:
        first.kill()
        first.wait()
    third = resnet(*args)
    assert third.returncode == 0, third.stderr
    assert read_metrics(out).finished


def test_a_flipped_byte_in_the_newest_checkpoint_falls_back_to_the_previous(reference_run, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(reference_run, out)
    assert Checkpoint.load(out / "checkpoint.prev.pt").state.step == 18  # the last two are kept
    data = bytearray((out / "checkpoint.pt").read_bytes())
    data[len(data) * 3 // 5] ^= 0x01  # inside the weights: the file still unpickles, only the checksum sees it
    (out / "checkpoint.pt").write_bytes(bytes(data))
    with pytest.raises(CorruptCheckpoint, match="sha256"):
        load_checkpoint(out)
    r = resnet(*TINY, "--out", str(out), "--resume")
    assert r.returncode == 0, r.stderr
    warning = [line for line in r.stderr.splitlines() if "corrupt" in line]
    assert len(warning) == 1 and "checkpoint.prev.pt (step 18)" in warning[0], r.stderr
    assert "resuming" in r.stdout and "step 18" in r.stdout
    assert_same_weights(reference_run, out)
    assert [e.step for e in read_metrics(out).evaluations] == [6, 12, 18, 24]


def test_both_checkpoints_damaged_is_a_clear_error(tmp_path):
    save_checkpoint(tmp_path, {"state": {"step": 1}, "w": torch.ones(3)})
    save_checkpoint(tmp_path, {"state": {"step": 2}, "w": torch.zeros(3)})
    for name in ("checkpoint.pt", "checkpoint.prev.pt"):
        (tmp_path / name).write_bytes((tmp_path / name).read_bytes()[:200])
    with pytest.raises(CorruptCheckpoint, match="both checkpoints"):
        load_latest_checkpoint(tmp_path)


def test_a_checkpoint_without_a_checksum_resumes_exactly(reference_run, tmp_path):
    """Checkpoints written before checksums existed (a plain torch.save of the same dict) still resume exactly."""
    out = tmp_path / "run"
    shutil.copytree(reference_run, out)
    old = torch.load(out / "checkpoint.prev.pt", weights_only=True)  # step 18
    del old["sha256"]
    (out / "checkpoint.prev.pt").unlink()
    torch.save(old, out / "checkpoint.pt")
    r = resnet(*TINY, "--out", str(out), "--resume")
    assert r.returncode == 0, r.stderr
    assert "step 18" in r.stdout and "warning" not in r.stderr
    assert_same_weights(reference_run, out)


def test_a_resume_with_other_settings_is_refused_unless_allowed(reference_run, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(reference_run, out)
    err = refused(capsys, *TINY, "--lr", "0.05", "--out", str(out), "--resume")
    assert "--lr default -> 0.05" in err and "--allow-changes lr" in err
    r = resnet(*TINY, "--lr", "0.05", "--out", str(out), "--resume", "--allow-changes", "lr")
    assert r.returncode == 0, r.stderr
    config = json.loads((out / "config.json").read_text())
    assert config["config"]["lr"] == 0.05
    assert [(h["step"], h["changed"]) for h in config["history"]] == [(24, {"lr": [None, 0.05]})]
    r = resnet(*TINY, "--lr", "0.05", "--out", str(out), "--resume")  # the change is now the run's own setting
    assert r.returncode == 0, r.stderr
    assert "'colour' is not a setting" in refused(capsys, *TINY, "--out", str(out), "--resume", "--allow-changes",
                                                  "lr,colour")


def test_existing_run_is_not_overwritten(reference_run):
    before = (reference_run / "checkpoint.pt").read_bytes()
    r = resnet(*TINY, "--out", str(reference_run))
    assert r.returncode == 2 and "--resume" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert (reference_run / "checkpoint.pt").read_bytes() == before


def test_checkpoint_of_another_model_is_refused(reference_run, tmp_path, capsys):
    out = tmp_path / "other"
    out.mkdir()
    (out / "checkpoint.pt").write_bytes((reference_run / "checkpoint.pt").read_bytes())
    args = [*[a if a != "resnet20" else "resnet32" for a in TINY], "--out", str(out), "--resume"]
    assert "--model resnet20 -> resnet32" in refused(capsys, *args)  # the settings the checkpoint records
    # its weights cannot become those of another net
    assert "checkpoint of resnet20" in refused(capsys, *args, "--allow-changes", "model")


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
    assert Checkpoint.load(out).state.step == 6  # the last good one, not overwritten


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


# ``resnet`` with SIGTERM sent to itself during the ``argv[1]``-th training step: the test, not the clock, decides
# the step the signal arrives at.
SIGTERM_DURING_STEP = """
import os, signal, sys
from resnet.training import trainer
real, calls = trainer.train_step, []
def step_then_signal(*args, **kwargs):
    calls.append(1)
    if len(calls) == int(sys.argv[1]):
        os.kill(os.getpid(), signal.SIGTERM)
    return real(*args, **kwargs)
trainer.train_step = step_then_signal
from resnet.cli import main
sys.exit(main(sys.argv[2:]))
"""


def test_sigterm_saves_a_checkpoint_then_resume_finishes(reference_run, tmp_path):
    """SIGTERM during step 10 is honoured at the next loss check (every 20 steps): a checkpoint at step 20 of 24."""
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-c", SIGTERM_DURING_STEP, "10", *TINY, "--eval-every", "100",
                           "--out", str(out)], env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 128 + signal.SIGTERM, proc.stderr
    assert "SIGTERM received; saved a checkpoint at step 20" in proc.stdout
    assert Checkpoint.load(out).state.step == 20
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
    double = torchrun(*args, "--sync-bn", "--out", str(tmp_path / "two"), extra=["--standalone"])
    assert double.returncode == 0, double.stderr[-3000:]
    assert "FutureWarning" not in double.stderr  # the all-reduce BN uses no deprecated collective
    one, two = read_metrics(tmp_path / "one"), read_metrics(tmp_path / "two")
    for a, b in zip(one.evaluations, two.evaluations, strict=True):
        assert a.step == b.step
        assert a.train_loss == pytest.approx(b.train_loss, rel=1e-4)
    w1, w2 = final_weights(tmp_path / "one"), final_weights(tmp_path / "two")
    for k in w1:
        torch.testing.assert_close(w1[k], w2[k], rtol=1e-3, atol=1e-3 if "running" in k else 1e-4, msg=k)


def test_two_nodes_on_localhost(tmp_path):
    args = ["train", "--model", "resnet20", "--data", "embedded", "--batch-size", "16", "--iterations", "4",
            "--eval-every", "4", "--precision", "fp32", "--no-progress", "--out", str(tmp_path / "run")]
    with reserved_port() as port:  # both nodes must be told the rendezvous port: it is held until they are done
        procs = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=1",
                                   f"--node_rank={i}", "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}",
                                   "--rdzv-id=test", "-m", "resnet", *args], env=ENV,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
        outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs[0][1][-2000:] + outs[1][1][-2000:]
    final = read_metrics(tmp_path / "run").final
    assert final.step == 4
    # The two ranks shared the evaluation, with rank 0's BN statistics: the error logged is that of the weights saved.
    from resnet.data.sources import data_source
    from resnet.evaluation.evaluate import evaluate_images
    from resnet.weights.format import load_weights

    w, val = load_weights(tmp_path / "run" / "last"), data_source("embedded").open("val")
    result = evaluate_images(w.model, w.normalization, val.images, val.labels)
    logged = read_metrics(tmp_path / "run").evaluations[0]
    assert result["top1_error"] == final.val_error == logged.val_error
    assert result["loss"] == pytest.approx(logged.val_loss, rel=1e-5)


def test_elastic_restart_continues_from_checkpoint(tmp_path, reference_run):
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1",
                             "--max-restarts=2", "-m", "resnet", *TINY,
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


# Evaluates the shipped ResNet-20 on the embedded validation images (1000, in 11 batches of 96 and one of 40) and a
# small image folder (15 images, batches of 4), as this process's rank of WORLD_SIZE; rank 0 writes the results.
SHARDED_EVAL = """
import json, sys
from resnet.data.imagefolder import open_image_folder
from resnet.data.sources import data_source
from resnet.evaluation.evaluate import evaluate_images
from resnet.evaluation.tta import evaluate_folder
from resnet.training.distributed import init_distributed, shutdown
from resnet.weights.format import load_weights
from resnet.weights.pretrained import pretrained_path

out, folder = sys.argv[1], sys.argv[2]
d = init_distributed("cpu")
w = load_weights(pretrained_path("resnet20-cifar10"))
val = data_source("embedded").open("val")
results = {"cifar": evaluate_images(w.model, w.normalization, val.images, val.labels, batch_size=96, rank=d.rank,
                                    world_size=d.world_size)}
results["folder"] = evaluate_folder(w.model, w.normalization, open_image_folder(folder, "val"), batch_size=4,
                                    crop_size=32, resize_size=36, workers=0, progress=False, rank=d.rank,
                                    world_size=d.world_size)
if d.rank == 0:
    with open(out, "w") as f:
        json.dump(results, f)
shutdown(d)
"""


def test_sharded_evaluation_equals_one_process(tmp_path):
    """Under torchrun, each of 2 ranks evaluates its slice of the held-out images, and the errors, counts and loss
    (summed in the one-process order) equal one process's to the last image and the last bit."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, per_class in (("train", 2), ("val", 5)):
        for c in ("ant", "bee", "cat"):
            (tmp_path / "data" / split / c).mkdir(parents=True)
            for i in range(per_class):
                Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(
                    tmp_path / "data" / split / c / f"{i}.png")
    script = tmp_path / "sharded_eval.py"
    script.write_text(SHARDED_EVAL)
    launchers = {"one": [], "two": ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]}
    for name, launcher in launchers.items():
        r = subprocess.run([sys.executable, *launcher, str(script), str(tmp_path / f"{name}.json"),
                            str(tmp_path / "data")], capture_output=True, text=True, env=ENV, timeout=300)
        assert r.returncode == 0, r.stderr[-3000:]
    a, b = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("one", "two"))
    assert a["cifar"]["images"] == 1000 and a["folder"]["images"] == 15
    assert a == b
