"""``resnet train --tensorboard``: each evaluation's scalars as TensorBoard events in the run directory, the same
figures as metrics.jsonl's (which stays the record); a one-line error where the package is missing."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from resnet.cli import main
from resnet.training import tensorboard

needs_tensorboard = pytest.mark.skipif(importlib.util.find_spec("tensorboard") is None,
                                       reason="the tensorboard package is not installed (the [tensorboard] extra)")
TINY = ("--model", "resnet20", "--data", "embedded", "--batch-size", "32", "--eval-every", "5", "--runtime",
        "fp32-cl", "--no-progress", "--tensorboard")


def train(*args: str) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, "-m", "resnet", "train", *TINY, *args], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return r


def evaluations(run: Path) -> list[dict]:
    return [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if not r.get("final")]


def scalars(run: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar of the run's event files (all of them: one per session), read back as TensorBoard reads them."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run), size_guidance={"scalars": 0})
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def assert_same(run: Path, steps: list[int]) -> None:
    records, found = evaluations(run), scalars(run)
    assert [r["step"] for r in records] == steps
    assert set(found) == set(tensorboard.TAGS.values())
    for key, tag in tensorboard.TAGS.items():
        assert [step for step, _ in found[tag]] == steps, tag
        # events store float32
        assert [value for _, value in found[tag]] == pytest.approx([r[key] for r in records], rel=1e-6), tag


@pytest.fixture(scope="module")
def board_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tensorboard") / "run"
    train("--iterations", "10", "--out", str(out))
    return out


@needs_tensorboard
def test_the_events_hold_every_evaluation_of_metrics_jsonl(board_run):
    assert len(list(board_run.glob("events.out.tfevents.*"))) == 1
    assert_same(board_run, [5, 10])


@needs_tensorboard
def test_a_resumed_run_continues_its_events(board_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(board_run, run)
    train("--iterations", "15", "--resume", "--allow-changes", "iterations", "--out", str(run))
    assert len(list(run.glob("events.out.tfevents.*"))) == 2  # one per session, read together
    assert_same(run, [5, 10, 15])


def test_without_the_package_one_line_before_any_work(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(tensorboard, "available", lambda: False)
    out = tmp_path / "run"
    assert main(["train", "--iterations", "1", "--tensorboard", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err == ("resnet train: error: --tensorboard needs the tensorboard package: "
                   "pip install 'resnet-reference[tensorboard]'\n")
    assert not out.exists()
