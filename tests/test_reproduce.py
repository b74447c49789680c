"""``resnet reproduce``: every experiment's smoke budget runs end to end on tiny data and writes its report and plots;
the lesion and layer-response machinery is checked on its own.

The CIFAR loader is replaced by a stand-in of a few random images (the experiments and the trainer both read
``resnet.data.cifar.load_split`` at call time), so the whole file takes seconds; the training runs are shared between
the tests through one module-scoped output folder, as the experiments share them in real use.
"""

from __future__ import annotations

import json
import re

import pytest
import torch

from resnet.cli import main
from resnet.data import cifar
from resnet.models import build_model

TRAIN_IMAGES, VAL_IMAGES = 32, 16


def tiny_split(dataset, data_dir, split, **kwargs):
    n = VAL_IMAGES if split in ("val", "test") else TRAIN_IMAGES
    g = torch.Generator().manual_seed(1 if split in ("val", "test") else 0)
    labels = torch.arange(n) % 10
    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
    return cifar.ImageSet(images, labels, list(cifar.CIFAR10_CLASSES))


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setattr(cifar, "load_split", tiny_split)
    torch.set_num_threads(min(2, torch.get_num_threads()))
    yield tmp_path_factory.mktemp("results")
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
    assert "resnet20-A-smoke-s0-synthetic" in runs and "plain20-plain-smoke-s0-synthetic" in runs


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


@pytest.mark.parametrize("name", ["imagenet-depth", "imagenet-shortcuts"])
def test_imagenet_configs_are_validated_and_printed(results, name):
    out = results / name
    assert main(["reproduce", name, "--budget", "smoke", "--data", "imagenet", "--data-dir", "/data/imagenet",
                 "--out", str(out)]) == 0
    report = (out / "report.md").read_text()
    assert "-m resnet train --model resnet34" in report and "--data-dir /data/imagenet" in report
    assert "not run" in report


def test_imagenet_smoke_launch_on_a_tiny_folder(tmp_path):
    from resnet.experiments.imagenet import folder_training_available

    if not folder_training_available():
        pytest.skip("the image-folder training data module is not there yet: configs are validated only")
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
