"""``resnet reproduce``: every experiment's smoke budget runs end to end on tiny data and writes its report and plots;
the lesion and layer-response machinery is checked on its own.

The CIFAR loader is replaced by a stand-in of a few random images (the experiments and the trainer both read
``DataSource.open`` of ``resnet.data.sources`` at call time), so the whole file takes seconds; the training runs are shared between
the tests through one module-scoped output folder, as the experiments share them in real use.
"""

from __future__ import annotations

import json
import re

import pytest
import torch

from resnet.cli import main
from resnet.data import cifar
from resnet.data.sources import MemorySource
from resnet.models import build_model

TRAIN_IMAGES, VAL_IMAGES = 32, 16


def tiny_split(source, split, data_dir=None, **kwargs):
    n = VAL_IMAGES if split in ("val", "test") else TRAIN_IMAGES
    g = torch.Generator().manual_seed(1 if split in ("val", "test") else 0)
    labels = torch.arange(n) % 10
    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
    return cifar.ImageSet(images, labels, list(cifar.CIFAR10_CLASSES))


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setattr(MemorySource, "open", tiny_split)
    threads = torch.get_num_threads()
    torch.set_num_threads(min(2, threads))
    yield tmp_path_factory.mktemp("results")
    torch.set_num_threads(threads)
    mp.undo()


def reproduce(results, name, *extra):
    out = results / name
    rc = main(["reproduce", name, "--budget", "smoke", "--data", "synthetic", "--out", str(out), "--device", "cpu",
               *extra])
    assert rc == 0
    report = (out / "report.md").read_text()
    assert "resnet reproduce " + name in report and "--budget smoke" in report
    assert json.loads((out / "config.json").read_text())["budget"] == "smoke"
    json.loads((out / "metrics.json").read_text())
    return out, report


@pytest.mark.parametrize("name, plots", [
    ("cifar-degradation", ["degradation.png", "final_train_error.png"]),
    ("cifar-depth", ["curves.png"]),
    ("cifar-shortcuts", ["shortcuts.png"]),
    ("layer-responses", ["layer_responses.png"]),
    ("lesion", ["lesion.png"]),
    ("loss-landscape", ["landscape_1d.png", "landscape_2d_20.png"]),
    ("gradient-flow", ["gradient_flow_20.png"]),
])
def test_smoke_budget_writes_report_and_plots(results, name, plots):
    out, report = reproduce(results, name)
    for plot in plots:
        assert (out / plot).stat().st_size > 1000, plot
        assert f"({plot})" in report


def test_runs_are_shared_and_reused(results, capsys):
    reproduce(results, "cifar-degradation")  # trained by the test above (or now, when run alone)
    capsys.readouterr()
    reproduce(results, "cifar-depth")
    log = capsys.readouterr().out
    assert "reusing the finished run" in log and "[reproduce] training" not in log
    runs = sorted(p.name for p in (results / "runs").iterdir())
    # the key names every setting that changes the run: recipe, iterations, warm-up, batch, eval interval, precision
    assert any(re.fullmatch(r"resnet20-A-paper-2it-wu0-b8-ev2-(bf16|fp32)-s0-synthetic", r) for r in runs), runs
    assert any(r.startswith("plain20-plain-paper-2it-") for r in runs), runs


@pytest.mark.parametrize("name", ["cifar-degradation", "cifar-depth", "layer-responses", "lesion", "loss-landscape",
                                  "gradient-flow", "cifar-shortcuts"])
def test_every_report_states_verdicts(results, name):
    _, report = reproduce(results, name)
    assert "Budget: `smoke`" in report and "training run(s)" in report
    section = report.split("## Verdicts", 1)[1].split("\n## ", 1)[0]
    assert "Welch" in section and "spread" in section.lower()
    lines = [line for line in section.splitlines() if re.match(r"- .*: \*\*", line)]
    assert lines
    for line in lines:
        assert re.search(r"\*\*(agrees|disagrees|not separable at this budget and seed count|not tested here)\*\*",
                         line), line


def test_report_is_rerendered_from_its_metrics(results, capsys):
    out, report = reproduce(results, "cifar-degradation")
    before = json.loads((out / "config.json").read_text())
    metrics = (out / "metrics.json").read_bytes()
    capsys.readouterr()
    assert main(["reproduce", "cifar-degradation", "--from-metrics", str(out / "metrics.json")]) == 0
    again = (out / "report.md").read_text()
    config = json.loads((out / "config.json").read_text())
    assert (out / "metrics.json").read_bytes() == metrics  # untouched
    assert config["code_version"] == before["code_version"] and "code_version" in config["rendered"]
    assert again.split("## Verdicts")[1].split("## Figures")[0] == report.split("## Verdicts")[1].split("## Figures")[0]
    assert "The numbers come from the original runs" in again and "--from-metrics" in again
    assert "![degradation](degradation.png)" in again
    # the wrong experiment, or a folder without metrics, is one line and exit status 2
    assert main(["reproduce", "cifar-depth", "--from-metrics", str(out / "metrics.json")]) == 2
    assert "belongs to the experiment 'cifar-degradation'" in capsys.readouterr().err
    assert main(["reproduce", "lesion", "--from-metrics", str(results / "nowhere" / "metrics.json")]) == 2
    assert main(["reproduce", "imagenet-depth", "--from-metrics", str(out / "metrics.json")]) == 2


def test_depth_table_shows_the_ten_view_test_where_the_recipe_ran_it(results):
    """The paper's recipe tests the single image (no column); a recipe that ran the 10-view test on its last weights
    (``fast``) gets its figure beside the single-image one, and an older metrics.json without the key still renders."""
    out, report = reproduce(results, "cifar-depth")
    assert "10-view" not in report
    metrics = json.loads((out / "metrics.json").read_text())
    header = "| model | params (ours) | params (paper) | val error % (final, mean +/- std over 1) |"
    for value, cell in ((None, None), (12.34, "12.34")):
        for m in metrics.values():
            if value is None:
                m.pop("val_error_10view", None)
            else:
                m["val_error_10view"] = [value]
        (out / "metrics.json").write_text(json.dumps(metrics))
        assert main(["reproduce", "cifar-depth", "--from-metrics", str(out / "metrics.json")]) == 0
        again = (out / "report.md").read_text()
        assert (header + " val error % (10-view, final) |" in again) == (cell is not None), again
        if cell:
            row = next(line for line in again.splitlines() if line.startswith("| ResNet-20 |"))
            assert row.split(" | ")[4] == cell, row


# ---------------------------------------------------------------------------------------------------------------------
# Provenance: a run's key and its config.json


def fake_run(path, spec, opts, finished=True, **changes):
    """A run directory as the trainer leaves it (config.json, metrics.jsonl), without training."""
    path.mkdir(parents=True)
    cfg = dict(spec.settings(opts), **{k: v for k, v in changes.items() if k != "precision"})
    config = {"config": cfg, "recipe": spec.recipe(opts).to_dict(),
              "runtime": {"precision": changes.get("precision", opts.resolved_precision)}}
    (path / "config.json").write_text(json.dumps(config))
    records = [{"step": 1, "train_loss": 2.3, "train_error": 90.0, "val_error": 90.0}]
    if finished:
        records.append({"final": True, "step": 2, "val_error": 88.0, "best_val_error": 88.0})
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_run_key_names_every_setting_that_changes_the_result(tmp_path):
    from resnet.runs.spec import Options, RunSpec

    spec = RunSpec("resnet20")
    base = Options("cifar-depth", budget="short", data="synthetic", device="cpu", precision="fp32")
    keys = {spec.key(base), spec.key(Options("cifar-depth", budget="short", data="synthetic", device="cpu",
                                              precision="bf16")),
            spec.key(Options("cifar-depth", budget="medium", data="synthetic", device="cpu", precision="fp32")),
            RunSpec("resnet20", seed=1).key(base), RunSpec("plain20").key(base)}
    assert len(keys) == 5
    assert spec.key(base) == "resnet20-A-paper-1000it-wu100-b128-ev100-fp32-s0-synthetic"
    assert RunSpec("resnet20", shortcut="A").key(base) == spec.key(base)  # option A is the default: the same run
    assert spec.legacy_key(base) == "resnet20-A-short-s0-synthetic"


def test_legacy_run_directories_are_found_when_their_config_matches(tmp_path):
    from resnet.runs.spec import Options, RunSpec
    from resnet.runs.store import ensure_run, run_path

    opts = Options("cifar-depth", budget="smoke", data="synthetic", device="cpu", precision="fp32",
                   runs=str(tmp_path / "runs"))
    spec = RunSpec("resnet20")
    legacy = fake_run(tmp_path / "runs" / spec.legacy_key(opts), spec, opts)
    log = []
    run = ensure_run(spec, opts, log=log.append)  # finished: reused, nothing trained
    assert run.path == legacy and run.final_val_error == 88.0
    assert log == [f"[reproduce] reusing the finished run {legacy}"]
    # a legacy directory of another run (another precision) is left alone: a new run goes under the full key
    other = RunSpec("plain20")
    fake_run(tmp_path / "runs" / other.legacy_key(opts), other, opts, precision="bf16")
    log.clear()
    assert run_path(other, opts, log=log.append) == tmp_path / "runs" / other.key(opts)
    assert len(log) == 1 and "precision='bf16' (asked: 'fp32')" in log[0]


def test_a_run_directory_holding_another_run_is_refused(tmp_path):
    from resnet.errors import UsageError
    from resnet.runs.spec import Options, RunSpec
    from resnet.runs.store import ensure_run

    opts = Options("cifar-depth", budget="smoke", data="synthetic", device="cpu", precision="fp32",
                   runs=str(tmp_path / "runs"))
    spec = RunSpec("resnet20")
    fake_run(tmp_path / "runs" / spec.key(opts), spec, opts, iterations=5000)
    with pytest.raises(UsageError, match=r"holds another run than ResNet-20 .*iterations=5000 \(asked: 2\)"):
        ensure_run(spec, opts, log=lambda m: None)


@pytest.mark.parametrize("name", ["imagenet-depth", "imagenet-shortcuts"])
def test_imagenet_configs_are_validated_and_printed(results, name):
    out = results / name
    assert main(["reproduce", name, "--budget", "smoke", "--data", "imagenet", "--data-dir", "/data/imagenet",
                 "--out", str(out)]) == 0
    report = (out / "report.md").read_text()
    assert "-m resnet train --model resnet34" in report and "--data-dir /data/imagenet" in report
    assert "not run" in report


def test_imagenet_smoke_launch_on_a_tiny_folder(tmp_path):
    from PIL import Image

    for split in ("train", "val"):
        for c in ("a", "b"):
            (tmp_path / "data" / split / c).mkdir(parents=True)
            for i in range(2):
                Image.new("RGB", (64, 48), (40 * i, 100, 200 if c == "a" else 0)).save(
                    tmp_path / "data" / split / c / f"{i}.png")
    out = tmp_path / "imagenet-depth"
    assert main(["reproduce", "imagenet-depth", "--budget", "smoke", "--data", "imagefolder", "--data-dir",
                 str(tmp_path / "data"), "--out", str(out), "--launch", "--device", "cpu"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert "top1_error" in metrics["plain18-plain-smoke-imagefolder"]["eval_center"]


def test_imagenet_refuses_cifar_data(results, capsys):
    assert main(["reproduce", "imagenet-depth", "--data", "cifar10", "--out", str(results / "x")]) == 2
    assert "--data imagenet" in capsys.readouterr().err


def test_lesion_of_an_identity_block_keeps_shapes():
    from resnet.experiments.lesion import DeletedBlock, can_delete, deleted

    net = build_model("resnet20").eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        blocks = net.blocks()
        assert isinstance(blocks[1].downsample, torch.nn.Identity)
        h = torch.relu(torch.randn(2, 16, 32, 32))
        with deleted(net, 1):
            assert isinstance(net.layer1[1], DeletedBlock)
            assert torch.equal(net.layer1[1](h), h)  # identity shortcut: the block becomes the identity
            assert net(x).shape == (2, 10)
        assert net.layer1[1] is blocks[1]  # restored
        with deleted(net, 3):  # first block of stage 2: option A shortcut (subsample + zero channels)
            assert net.layer2[0](h).shape == (2, 32, 16, 16)
            assert net(x).shape == (2, 10)
    plain = build_model("plain20")
    assert can_delete(plain.blocks()[1]) and not can_delete(plain.blocks()[3])
    with pytest.raises(ValueError):
        with deleted(plain, 3):
            pass


@pytest.mark.parametrize("model", ["resnet20", "plain20", "resnet56"])
def test_layer_response_hooks_one_per_3x3_layer(model):
    from resnet.experiments.responses import ResponseStats, layer_stds
    from resnet.data.normalize import Normalization

    net = build_model(model).eval()
    blocks_3x3 = sum(1 for b in net.blocks() for m in b.modules()
                     if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3))
    stats = ResponseStats(net)
    assert len(stats) == blocks_3x3 == 6 * ((net.config.depth - 2) // 6)
    stats.remove()
    if model == "resnet20":
        images = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)
        stds = layer_stds(net, Normalization.per_channel(), images, batch_size=4)
        assert len(stds) == blocks_3x3 and all(s > 0 for s in stds)
        assert not any(m._forward_hooks for m in net.modules())  # hooks removed


def test_filter_normalized_direction():
    from resnet.experiments.landscape import filter_normalized_direction

    net = build_model("resnet20")
    d = filter_normalized_direction(net, torch.Generator().manual_seed(0))
    for name, w in net.named_parameters():
        if w.dim() <= 1:
            assert not d[name].any(), name
        else:
            assert torch.allclose(d[name].flatten(1).norm(dim=1), w.flatten(1).norm(dim=1), rtol=1e-4), name


def test_unknown_budget_is_refused(capsys):
    with pytest.raises(SystemExit):
        main(["reproduce", "cifar-depth", "--budget", "huge"])


def test_a_report_names_its_data_and_says_when_it_is_not_the_papers(tmp_path):
    """The images a report measured on are recorded with it (Options.data_files, from the data folder) and named in
    its Data line, with the JPEG caveat where they are lossy; a re-render reads them back from config.json."""
    from resnet.reporting.report import protocol_lines
    from resnet.runs.spec import Options

    jpeg = Options(name="cifar-depth", budget="smoke", data_files="JPEG files of quality 75 (`cifar10.tar.gz`)")
    line = protocol_lines(jpeg)[0]
    assert "JPEG files of quality 75" in line and "the effect of the JPEG re-encoding alone is not measured" in line
    assert Options.from_config({**jpeg.to_dict(), "name": "cifar-depth"}).data_files == jpeg.data_files
    lossless = protocol_lines(Options(name="cifar-depth", budget="smoke", data_files="the official CIFAR files "
                                                                                     "(lossless)"))[0]
    assert "(lossless)" in lossless and "JPEG" not in lossless
