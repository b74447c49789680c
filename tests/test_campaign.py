"""``resnet campaign`` / ``resnet runs``: the plan's runs train in order and are skipped once finished; SIGTERM stops a
run with its checkpoint saved and the same command finishes it; two processes share one plan, each run with one
writer; a finished run's record is copied out and counts as finished on any machine; the time left is the measured
rate times the iterations left.

The campaign runs in a child process (a real signal, a real OS lock) on a few random CIFAR-shaped images, with test
budgets registered in that process, so the file takes seconds.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from resnet.campaign.plan import Entry, run_path
from resnet.campaign.status import campaign_status, format_status
from resnet.cli import main
from resnet.errors import UsageError
from resnet.runs import budgets
from resnet.runs.spec import Options, RunSpec
from resnet.training.run_dir import writer

REPO = Path(__file__).resolve().parents[1]

CHILD = textwrap.dedent("""
    import sys, torch
    from dataclasses import replace
    from pathlib import Path
    from resnet.data import cifar
    from resnet.data.sources import MemorySource
    from resnet.campaign.plan import Entry
    from resnet.campaign.train import run_campaign
    from resnet.runs.budgets import BUDGETS
    from resnet.runs.spec import Options, RunSpec

    def tiny_split(source, split, data_dir=None, **kwargs):
        n = 16 if split in ("val", "test") else 32
        g = torch.Generator().manual_seed(1 if split in ("val", "test") else 0)
        images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
        return cifar.ImageSet(images, torch.arange(n) % 10, list(cifar.CIFAR10_CLASSES))

    MemorySource.open = tiny_split
    torch.set_num_threads(1)
    iterations = [int(n) for n in sys.argv[2].split(",")]
    for n in iterations:
        BUDGETS[f"t{n}"] = replace(BUDGETS["smoke"], name=f"t{n}", iterations=n, evaluations=2)
    plan = tuple(Entry(RunSpec("resnet20", seed=i), f"t{n}", "test") for i, n in enumerate(iterations))
    opts = Options(name="campaign", data="synthetic", runs=sys.argv[1], device="cpu", precision="fp32")
    print("started", flush=True)
    result = run_campaign(opts, plan, log=lambda m: print(m, flush=True), records=Path(sys.argv[1]) / "records")
    print(f"result: {result.finished} of {result.runs} finished", flush=True)
    sys.exit(0 if result.stopped is None else 128 + result.stopped.signum)
""")


def child(runs: Path, iterations: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    return subprocess.Popen([sys.executable, "-c", CHILD, str(runs), iterations], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env)


def wait_for(predicate, timeout=600.0):
    end = time.time() + timeout
    while time.time() < end:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError("timed out")


@pytest.fixture(autouse=True)
def test_budgets(monkeypatch):
    """The test budgets ``plan_of`` registers live in a copy of the budgets, gone after each test."""
    monkeypatch.setattr(budgets, "BUDGETS", dict(budgets.BUDGETS))


def plan_of(iterations: str) -> tuple[Entry, ...]:
    from dataclasses import replace

    plan = []
    for i, n in enumerate(int(n) for n in iterations.split(",")):
        budgets.BUDGETS.setdefault(f"t{n}", replace(budgets.BUDGETS["smoke"], name=f"t{n}", iterations=n,
                                                    evaluations=2))
        plan.append(Entry(RunSpec("resnet20", seed=i), f"t{n}", "test"))
    return tuple(plan)


def test_sigterm_stops_with_a_checkpoint_and_the_same_command_finishes(tmp_path):
    runs = tmp_path / "runs"
    p = child(runs, "4,300")
    plan = plan_of("4,300")
    opts = Options(name="campaign", data="synthetic", runs=str(runs), device="cpu", precision="fp32")
    first, second = (run_path(entry, opts) for entry in plan)
    wait_for(lambda: (second / "config.json").exists())
    # While it runs: the view says which run and who writes it; the first run's record is copied out.
    wait_for(lambda: writer(second) is not None)
    assert writer(second).startswith(f"PID {p.pid} ")
    assert (runs / "records" / first.name / "metrics.jsonl").read_bytes() == (first / "metrics.jsonl").read_bytes()
    analysis = json.loads((runs / "records" / first.name / "analysis.json").read_text())  # its last weights' analyses
    assert len(analysis["layer_std"]) == 18 and analysis["images"] == 16 and "lesion" not in analysis
    status = campaign_status(opts, plan)
    assert {r.run: r.state for r in status.runs} == {first.name: "done", second.name: "running"}
    assert status.running == [{"run": second.name, "writer": writer(second)}]

    wait_for(lambda: (second / "checkpoint.pt").exists())  # its first evaluation, at step 150
    p.send_signal(signal.SIGTERM)
    out, _ = p.communicate(timeout=600)
    assert p.returncode == 128 + signal.SIGTERM, out
    assert f"stopped: {second.name} saved at step" in out and "result: 1 of 2 finished" in out
    assert (second / "checkpoint.pt").exists() and writer(second) is None
    stopped_at = int(out.split("saved at step ")[1].split(";")[0])
    assert 150 <= stopped_at < 300
    assert campaign_status(opts, plan).runs[1].state == "stopped"

    # The same command: the finished run is skipped, the stopped one resumes from its step and finishes.
    p = child(runs, "4,300")
    out, _ = p.communicate(timeout=600)
    assert p.returncode == 0, out
    assert "run 1/2" not in out and "resuming ResNet-20" in out and "all 2 runs are finished" in out and "result: 2 of 2 finished" in out
    assert [r.state for r in campaign_status(opts, plan).runs] == ["done", "done"]


def test_two_processes_share_one_plan(tmp_path):
    """The second process skips the run the first is training and takes the next; neither trains a run twice."""
    runs = tmp_path / "runs"
    plan = plan_of("300,5")
    opts = Options(name="campaign", data="synthetic", runs=str(runs), device="cpu", precision="fp32")
    first, second = (run_path(entry, opts) for entry in plan)
    a = child(runs, "300,5")
    wait_for(lambda: writer(first) is not None)
    b = child(runs, "300,5")
    out_b, _ = b.communicate(timeout=600)
    assert b.returncode == 0, out_b
    assert f"{first.name} is being trained by PID {a.pid} " in out_b and "run 2/2" in out_b
    assert "1 of 2 runs are finished; the other 1 are being trained by other processes" in out_b
    out_a, _ = a.communicate(timeout=600)
    assert a.returncode == 0 and "run 2/2" not in out_a and "result: 2 of 2 finished" in out_a, out_a
    assert sorted(p.name for p in (runs / "records").iterdir()) == sorted([first.name, second.name])


def test_a_recorded_run_is_finished_on_a_machine_without_its_directory(tmp_path):
    runs = tmp_path / "runs"
    p = child(runs, "2")
    out, _ = p.communicate(timeout=600)
    assert p.returncode == 0, out
    opts = Options(name="campaign", data="synthetic", runs=str(runs), precision="fp32")
    import shutil

    shutil.rmtree(run_path(plan_of("2")[0], opts))
    p = child(runs, "2")
    out, _ = p.communicate(timeout=600)
    assert p.returncode == 0 and "run 1/" not in out and "all 1 runs are finished" in out, out
    row = campaign_status(opts, plan_of("2"), records=runs / "records").runs[0]
    assert row.state == "done" and row.step == 2


def test_a_finished_plan_trains_nothing(tmp_path):
    runs = tmp_path / "runs"
    p = child(runs, "2,3")
    out, _ = p.communicate(timeout=600)
    assert p.returncode == 0 and "run 1/2" in out and "run 2/2" in out, out
    p = child(runs, "2,3")
    out, _ = p.communicate(timeout=600)
    assert p.returncode == 0 and "run 1/" not in out and "all 2 runs are finished" in out, out
    status = campaign_status(Options(name="campaign", data="synthetic", runs=str(runs), precision="fp32"),
                             plan_of("2,3"))
    assert [r.state for r in status.runs] == ["done", "done"] and status.seconds_left == 0


def _fake_run(path: Path, steps_and_seconds, final=None):
    path.mkdir(parents=True)
    lines = [{"step": s, "seconds": t, "val_error": 50.0, "train_error": 60.0} for s, t in steps_and_seconds]
    if final:
        lines.append(final)
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))


def test_time_left_is_the_measured_rate_times_the_iterations_left(tmp_path):
    runs = tmp_path / "runs"
    plan = plan_of("1000,2000")
    plan = plan + (Entry(RunSpec("resnet56", seed=0), "t1000", "test"),)
    opts = Options(name="campaign", data="synthetic", runs=str(runs))
    # Run 1: 100 steps took 10 s after a slower start: the rate is the recent one (0.1 s per step).
    _fake_run(run_path(plan[0], opts), [(100, 30.0), (200, 40.0), (300, 50.0)])
    rows = campaign_status(opts, plan).runs
    assert rows[0].state == "stopped" and rows[0].seconds_per_step == pytest.approx(0.1)
    assert rows[0].seconds_left == pytest.approx(700 * 0.1)
    # Run 2, not started, same model: timed at run 1's rate; ResNet-56: scaled by multiply-adds (125.5M / 40.6M).
    assert rows[1].state == "waiting" and rows[1].seconds_left == pytest.approx(2000 * 0.1)
    assert rows[2].seconds_per_step / 0.1 == pytest.approx(125.5 / 40.6, rel=0.01)
    assert "x multiply-adds" in rows[2].rate_from
    text = format_status(campaign_status(opts, plan))
    assert "not running" in text and "0:01" in text  # 70 s left on run 1


def test_a_run_not_started_is_timed_from_the_latest_measured_run(tmp_path):
    """Machines differ more than nets do: the run measured last (here ResNet-56, on the machine now) times the runs not
    started, scaled by multiply-adds, even where an older run of the same model was measured (on another machine)."""
    runs = tmp_path / "runs"
    plan = plan_of("1000,2000") + (Entry(RunSpec("resnet56", seed=0), "t1000", "test"),
                                   Entry(RunSpec("resnet110", seed=0), "t1000", "test"))
    opts = Options(name="campaign", data="synthetic", runs=str(runs))
    _fake_run(run_path(plan[0], opts), [(100, 10.0), (200, 20.0)])  # ResNet-20, 0.1 s per step, long ago
    _fake_run(run_path(plan[2], opts), [(100, 50.0), (200, 100.0)])  # ResNet-56, 0.5 s per step, just now
    os.utime(run_path(plan[0], opts) / "metrics.jsonl", (1e9, 1e9))
    rows = campaign_status(opts, plan).runs
    assert rows[1].seconds_per_step / 0.5 == pytest.approx(40.55 / 125.5, rel=0.01)
    assert rows[1].rate_from == "resnet56 x multiply-adds"
    assert rows[3].seconds_per_step / 0.5 == pytest.approx(252.9 / 125.5, rel=0.01)
    assert rows[3].rate_from == "resnet56 x multiply-adds"


def test_runs_command_prints_the_plan(tmp_path, capsys):
    assert main(["runs", "--runs", str(tmp_path / "none"), "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["running"] == [] and status["runs"][0]["run"].startswith("resnet20-A-paper-64000it-")
    by_run = {r["run"]: r["state"] for r in status["runs"]}
    # The campaign's first runs are finished: their records are checked in (results/records).
    assert by_run["resnet56-A-fast-32000it-wu0-b128-ev2000-bf16-s0-cifar10"] == "done"
    # The rest: done where their record is checked in, else waiting (nothing runs in an empty runs folder).
    recorded = {p.name for p in (REPO / "results" / "records").iterdir()}
    assert all(s == ("done" if run in recorded else "waiting") for run, s in by_run.items() if "-ev500-" in run)


def test_ship_copies_the_last_weights_with_their_provenance(tmp_path):
    import torch

    from resnet.campaign.train import ship
    from resnet.weights import pretrained
    from resnet.weights.format import load_weights

    runs = tmp_path / "runs"
    p = child(runs, "2")
    out, _ = p.communicate(timeout=600)
    assert p.returncode == 0, out
    opts = Options(name="campaign", data="synthetic", runs=str(runs), precision="fp32")
    entry = Entry(RunSpec("resnet20", seed=0), plan_of("2")[0].budget, "test", ships_as="resnet20-test")
    path = run_path(entry, opts)
    shipped = load_weights(ship(entry, opts, tmp_path / "pretrained"))
    assert not (pretrained.PRETRAINED_DIR / "resnet20-test.json").exists()
    last = load_weights(path / "last")
    final = [json.loads(line) for line in (path / "metrics.jsonl").open()][-1]
    assert all(torch.equal(a, b) for a, b in zip(shipped.model.state_dict().values(), last.model.state_dict().values()))
    meta = shipped.meta
    assert (meta["budget"], meta["seed"], meta["iterations"], meta["run"]) == ("t2", 0, 2, path.name)
    assert meta["accuracy"]["top1_error"] == final["val_error"] and meta["accuracy"]["split"] == "val"
    assert meta["accuracy"]["images"] == 16 and meta["recipe"]["name"] == "paper"
    # The recipe says how often the run evaluated, not the recipe's default.
    eval_every = json.loads((path / "config.json").read_text())["eval_every"]
    assert meta["recipe"]["evaluations"] == -(-2 // eval_every)
    unfinished = Entry(RunSpec("resnet20", seed=5), "t2", "test", ships_as="x")
    with pytest.raises(UsageError, match="has not finished"):
        ship(unfinished, opts, tmp_path / "pretrained")


def test_a_run_started_in_one_precision_continues_in_the_other(tmp_path):
    from dataclasses import replace

    runs = tmp_path / "runs"
    entry = plan_of("1000")[0]
    bf16 = Options(name="campaign", data="synthetic", runs=str(runs), precision="bf16")
    fp32 = replace(bf16, precision="fp32")
    assert run_path(entry, bf16) != run_path(entry, fp32)  # the keys name the precision
    started = run_path(entry, bf16)
    _fake_run(started, [(100, 10.0)])
    assert run_path(entry, fp32) == started  # found from a machine without native bf16, not started over
    assert campaign_status(fp32, (entry,)).runs[0].step == 100


def test_a_records_analyses_are_the_experiments_own_measurements():
    """analysis.json holds what Fig. 7 and the lesion study measure (their own functions, fp32), the lesion errors for
    the lesion study's depth only."""
    import torch

    from resnet.campaign.analyses import analyse
    from resnet.data.normalize import Normalization
    from resnet.experiments.lesion import lesion_errors
    from resnet.experiments.responses import layer_stds
    from resnet.models import build_model
    from resnet.runtime import resolve_runtime
    from resnet.weights.format import Weights

    g = torch.Generator().manual_seed(0)
    images, labels = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8, generator=g), torch.arange(8) % 10
    rt = resolve_runtime("cpu", "fp32", compile=False)
    for model, layers in (("resnet20", 18), ("plain56", 54)):
        torch.manual_seed(0)
        w = Weights(build_model(model), Normalization.per_channel())
        a = analyse(w, images, labels)
        assert a["layer_std"] == layer_stds(w.model, w.normalization, images, rt=rt)
        assert len(a["layers"]) == len(a["layer_std"]) == layers and a["images"] == 8 and a["precision"] == "fp32"
    assert "lesion" not in analyse(Weights(build_model("resnet20"), Normalization.per_channel()), images, labels)
    assert a["lesion"] == lesion_errors(w.model, w.normalization, images, labels, rt)
    assert len(a["lesion"]["errors"]) == 27 and a["lesion"]["errors"].count(None) == 2  # the two widening blocks
