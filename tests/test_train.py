"""The paper's recipe, batched augmentation, and the train/eval commands on the embedded data."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from resnet.data.batches import InMemoryBatches, pad_crop_flip
from resnet.data.normalize import Normalization
from resnet.errors import UsageError
from resnet.training.recipes import resolve_recipe


def test_paper_cifar_schedule_is_sec_4_2():
    r = resolve_recipe("paper", "cifar", 20)
    assert (r.lr, r.momentum, r.weight_decay, r.batch_size, r.iterations) == (0.1, 0.9, 1e-4, 128, 64_000)
    lrs = [r.lr_at(s) for s in (0, 31_999, 32_000, 47_999, 48_000, 63_999)]
    assert lrs == pytest.approx([0.1, 0.1, 0.01, 0.01, 0.001, 0.001])


def test_resnet110_warms_up_at_0_01_for_400_iterations():
    r = resolve_recipe("paper", "cifar", 110)
    assert r.lr_at(0) == r.lr_at(399) == 0.01 and r.lr_at(400) == 0.1
    assert resolve_recipe("paper", "cifar", 56).lr_at(0) == 0.1


@pytest.mark.parametrize("iterations, warmup", [(64_000, 400), (14_080, 400), (1000, 400), (600, 300), (20, 10)])
def test_resnet110_warm_up_keeps_its_400_iterations_on_shorter_runs(iterations, warmup):
    """Not a share of the run (it used to shrink to 1 iteration, and the run blew up): the 400 iterations, or the
    whole first phase of a run too short for them, so that 0.1 is never used before the warm-up's length."""
    r = resolve_recipe("paper", "cifar", 110, iterations=iterations)
    assert r.warmup_iterations == warmup
    assert r.lr_at(warmup - 1) == 0.01 and max(r.lr_at(s) for s in range(0, iterations, 10)) == pytest.approx(
        0.1 if warmup == 400 else 0.01)


def test_shorter_budget_scales_milestones():
    r = resolve_recipe("paper", "cifar", 20, iterations=6400)
    assert r.lr_at(3199) == pytest.approx(0.1) and r.lr_at(3200) == pytest.approx(0.01)
    assert r.lr_at(4800) == pytest.approx(0.001)


def test_imagenet_paper_recipe_is_sec_3_4():
    r = resolve_recipe("paper", "imagenet", 50)
    assert (r.batch_size, r.lr, r.schedule, r.weight_decay) == (256, 0.1, "plateau", 1e-4)
    assert r.lr_at(10, plateau_drops=2) == pytest.approx(0.001)


def test_unknown_recipe():
    with pytest.raises(UsageError, match="unknown recipe"):
        resolve_recipe("bogus", "cifar", 20)


def labelled_images(n=64):
    """Images whose every pixel encodes the label, so alignment survives any crop or flip (padding aside)."""
    y = torch.arange(n) % 10
    x = (y * 20 + 10).to(torch.uint8)[:, None, None, None].expand(n, 3, 32, 32).contiguous()
    x[:, :, :, :16] += 1  # left half brighter by one: shows flips
    return x, y


def test_augmentation_varies_and_keeps_labels_aligned():
    x, y = labelled_images()
    b = InMemoryBatches(x, y, Normalization(torch.zeros(3, 1, 1), torch.ones(3, 1, 1) / 255), 32, seed=3)
    xb, yb = b.batch(0)
    centre = xb[:, 0, 16, 16].round().long()
    assert torch.equal(((centre - 10) // 20).clamp(0, 9), yb)  # every image still carries its own label
    zero_rows = (xb[:, 0] == 0).all(2).sum(1)  # rows of padding show the vertical offset
    assert len(set(zero_rows.tolist())) > 1  # offsets vary
    left_brighter = xb[:, 0, 16, 4] > xb[:, 0, 16, 28]
    assert 0 < int(left_brighter.sum()) < 32  # some flipped, some not
    again, _ = b.batch(0)
    assert torch.equal(again, xb)  # a pure function of (seed, step): exact resume
    assert not torch.equal(b.batch(1)[0], xb)


def test_pad_crop_flip_matches_a_reference():
    x = torch.randint(0, 255, (4, 3, 8, 8), dtype=torch.uint8)
    offsets, flips = torch.tensor([[0, 0], [8, 8], [3, 5], [4, 4]]), torch.tensor([False, True, True, False])
    out = pad_crop_flip(x, offsets, flips)
    p = torch.nn.functional.pad(x, (4, 4, 4, 4))
    for i in range(4):
        ref = p[i, :, offsets[i, 0]:offsets[i, 0] + 8, offsets[i, 1]:offsets[i, 1] + 8]
        assert torch.equal(out[i], ref.flip(-1) if flips[i] else ref)


def test_distributed_ranks_split_the_global_batch():
    x, y = labelled_images(128)
    norm = Normalization.per_channel()
    whole = InMemoryBatches(x, y, norm, 32, seed=1).batch(5)
    parts = [InMemoryBatches(x, y, norm, 32, seed=1, rank=r, world_size=2).batch(5) for r in range(2)]
    assert torch.equal(torch.cat([p[0] for p in parts]), whole[0])
    assert torch.equal(torch.cat([p[1] for p in parts]), whole[1])


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "resnet", *args], capture_output=True, text=True)


def _train_tiny(tmp_path_factory, name: str, *args: str, says: str):
    """A ResNet-20 run on the embedded data, in a fresh folder; its summary line must contain ``says``."""
    out = tmp_path_factory.mktemp("train") / name
    r = run_cli("train", "--model", "resnet20", "--data", "embedded", "--no-progress", "--out", str(out), *args)
    assert r.returncode == 0, r.stderr
    assert says in r.stdout
    # --no-progress: no bar, but still one line per evaluation
    evaluations = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()][:-1]
    assert [line.split()[1] for line in r.stdout.splitlines() if line.startswith("step ")] == \
        [f"{step}/{evaluations[-1]}" for step in evaluations]
    return out


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    return _train_tiny(tmp_path_factory, "run", "--iterations", "20", "--batch-size", "64", "--eval-every", "10",
                       says="val error")


def test_eval_of_a_run_dir(tiny_run):
    r = run_cli("eval", "--weights", str(tiny_run), "--data", "embedded", "--split", "val", "--json")
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    assert result["images"] == 1000 and 0 <= result["top1_error"] <= 100 and result["top5_error"] <= result["top1_error"]
    best = json.loads((tiny_run / "best.json").read_text())
    # the error stored with the best weights is what evaluation of those weights gives (same precision)
    assert best["accuracy"]["top1_error"] == pytest.approx(result["top1_error"], abs=0.3)
    # the weights' recipe says how the run went: 20 iterations evaluated every 10, not the recipe's default
    last = json.loads((tiny_run / "last.json").read_text())
    assert best["recipe"]["evaluations"] == last["recipe"]["evaluations"] == 2
    config = json.loads((tiny_run / "config.json").read_text())
    assert config["recipe"]["iterations"] == 20 and "code_version" in config and config["command"]


def test_resume_of_a_finished_run_is_a_no_op(tiny_run):
    before = (tiny_run / "last.safetensors").read_bytes()
    r = run_cli("train", "--model", "resnet20", "--data", "embedded", "--iterations", "20", "--batch-size", "64",
                "--eval-every", "10", "--no-progress", "--out", str(tiny_run), "--resume")
    assert r.returncode == 0, r.stderr
    assert (tiny_run / "last.safetensors").read_bytes() == before


@pytest.fixture(scope="module")
def fast_run(tmp_path_factory):
    return _train_tiny(tmp_path_factory, "fast", "--recipe", "fast", "--iterations", "8", "--batch-size", "32",
                       says="with --tta shift")


def test_fast_recipe_ends_with_its_test_protocol_and_logs_wall_time(fast_run):
    """The fast recipe evaluates four times per run; its final record adds the error under its test protocol
    (``shift``), which is what ``resnet eval --tta shift`` gives for the last weights; every record carries the run's
    growing wall time."""
    out = fast_run
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    final = rows[-1]
    assert final["final"] and final["tta"] == "shift" and 0 <= final["val_error_tta"] <= 100
    assert [r["step"] for r in rows[:-1]] == [2, 4, 6, 8]
    assert 0 < rows[0]["seconds"] < rows[1]["seconds"] <= final["seconds"]
    ev = run_cli("eval", "--weights", str(out / "last.safetensors"), "--data", "embedded", "--split", "val",
                 "--tta", "shift", "--json")
    assert ev.returncode == 0, ev.stderr
    assert json.loads(ev.stdout)["top1_error"] == pytest.approx(final["val_error_tta"], abs=0.3)


def test_compare_reports_each_run_and_when_it_reached_a_target(tiny_run, fast_run, tmp_path):
    figure = tmp_path / "curves.png"
    r = run_cli("compare", str(tiny_run), str(fast_run), "--target", "100", "--plot", str(figure), "--x", "seconds",
                "--json")
    assert r.returncode == 0, r.stderr
    rows = {Path(row["run"]).name: row for row in json.loads(r.stdout)["runs"]}
    fast, paper = rows["fast"], rows[tiny_run.name]
    final = json.loads((fast_run / "metrics.jsonl").read_text().splitlines()[-1])
    assert fast["recipe"] == "fast" and fast["iterations"] == 8 and fast["finished"]
    assert fast["val_error_tta"] == final["val_error_tta"] and fast["seconds"] == final["seconds"]
    assert fast["reached"]["step"] == 2 and paper["reached"]["step"] == 10  # the first evaluation of each
    assert paper["recipe"] == "paper" and paper["tta"] is None
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    r = run_cli("compare", str(fast_run), "--target", "-1")
    assert r.returncode == 0 and "not reached" in r.stdout and "shift" in r.stdout
    r = run_cli("compare", str(tmp_path))
    assert r.returncode == 2 and "not a run directory" in r.stderr and len(r.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("args, needle", [
    (["train", "--model", "resnet21"], "unknown model"),
    (["train", "--data", "mnist"], "unknown dataset"),
    (["train", "--recipe", "bogus", "--iterations", "1"], "unknown recipe"),
    (["train", "--data", "cifar10", "--data-dir", "{tmp}/missing/x", "--iterations", "1"], "cifar-10"),
    (["eval", "--weights", "/nonexistent/run"], "/nonexistent/run"),
    (["train", "--data", "embedded", "--batch-size", "100000", "--iterations", "1"], "--batch-size"),
])
def test_bad_input_is_one_line_exit_2(args, needle, tmp_path, monkeypatch):
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    r = run_cli(*args, *(["--out", str(tmp_path / "r")] if args[0] == "train" else []))
    assert r.returncode == 2, r.stderr
    assert needle.lower() in r.stderr.lower() and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not (tmp_path / "missing").exists()  # a mistyped --data-dir is not left behind, created and empty


def test_a_second_train_starts_a_run_of_its_own_and_says_where(tmp_path):
    """Without --out, runs go to runs/run, runs/run-2, ...; --resume continues the latest."""
    def train(*extra):
        return subprocess.run([sys.executable, "-m", "resnet", "train", "--data", "synthetic", "--iterations", "2",
                               "--batch-size", "8", "--no-progress", *extra], capture_output=True, text=True,
                              cwd=tmp_path)

    for expected in ("run", "run-2"):
        r = train()
        assert r.returncode == 0, r.stderr
        assert f"run directory: {Path('runs') / expected}" in r.stdout
        assert (tmp_path / "runs" / expected / "metrics.jsonl").exists()
    r = train("--resume")
    assert r.returncode == 0 and f"run directory: {Path('runs') / 'run-2'}" in r.stdout, r.stderr
    assert not (tmp_path / "runs" / "run-3").exists()


def test_unwritable_output_folder(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    r = run_cli("train", "--iterations", "1", "--out", str(blocker / "run"))
    assert r.returncode == 2 and "--out" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_linear_warmup_ramps_to_the_base_rate():
    r = resolve_recipe("paper", "cifar", 56, iterations=600, warmup=100)
    assert r.lr_at(0) == pytest.approx(0.001) and r.lr_at(49) == pytest.approx(0.05)
    assert r.lr_at(99) == pytest.approx(0.1) and r.lr_at(100) == pytest.approx(0.1)
    assert r.lr_at(300) == pytest.approx(0.01)  # the milestones are unchanged


def test_default_evaluation_cadence_fits_the_run():
    """At most 10 evaluations per run and at least an epoch apart (a run shorter than an epoch evaluates at its end
    only); a recipe's own number of evaluations, and the plateau schedule's one per epoch, are kept."""
    def every(name, family, iterations, steps_per_epoch=351):
        return resolve_recipe(name, family, 20, iterations=iterations).eval_every(steps_per_epoch)

    assert every("paper", "cifar", 64_000) == 6400  # Sec. 4.2's run: 10 evaluations, 18 epochs apart
    assert every("paper", "cifar", 2000) == 351  # 5.7 epochs: one per epoch
    assert every("paper", "cifar", 20) == 351  # shorter than an epoch: the final evaluation only
    assert every("fast", "cifar", 8) == 2  # the fast recipe's four evaluations
    assert every("paper", "imagenet", 600_000, 5004) == 5004  # the plateau schedule's patience counts epochs
