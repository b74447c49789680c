"""Benchmarks, the fast recipe and the runtime defaults: well-formed figures and sane settings, not speed."""

import json
import warnings

import pytest
import torch

from resnet.bench import BenchConfig, format_bench, matmul_gflops, reference_model, run_bench
from resnet.cli import main
from resnet.models import build_model, count_macs, count_params, model_config
from resnet.runtime import CompiledOrEager, Runtime, resolve_runtime


def _check_side(s: dict, memory: bool):
    for key in ("images_per_s", "step_ms", "gflops", "fraction_of_yardstick", "fraction_of_fp32_matmul",
                "first_step_s"):
        assert isinstance(s[key], (int, float)) and s[key] > 0, key
    if memory:
        assert s["peak_memory_mb"] is not None and s["peak_memory_mb"] > 0


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_bench_json_is_well_formed(mode, capsys):
    argv = ["bench", mode, "--model", "resnet20", "--batch-size", "8", "--steps", "2", "--warmup", "1",
            "--rounds", "2", "--matmul-size", "256", "--no-compile", "--json", "--quiet"]
    if mode == "eval":
        argv.append("--no-memory")
    assert main(argv) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["mode"] == mode and r["model"] == "resnet20" and r["batch_size"] == 8 and r["steps"] == 2
    assert r["macs_per_image"] == count_macs(build_model("resnet20"), 32)
    assert r["flops_per_image"] == r["macs_per_image"] * 2 * (3 if mode == "train" else 1)
    assert r["matmul"]["fp32_gflops"] > 0 and r["yardstick"]["gflops"] > 0
    assert r["yardstick"]["dtype"] == ("bf16" if r["native_bf16"] else "fp32") and r["cpu_capability"]
    for side in ("reference", "ours"):
        _check_side(r[side], memory=mode == "train")
        s = r[side]
        assert abs(s["images_per_s"] - 8e3 / s["step_ms"]) / s["images_per_s"] < 0.01
        assert abs(s["gflops"] - s["images_per_s"] * r["flops_per_image"] / 1e9) / s["gflops"] < 0.01
        assert s["fraction_of_yardstick"] == pytest.approx(s["gflops"] / r["yardstick"]["gflops"], rel=0.05)
    assert r["speedup"] == pytest.approx(r["ours"]["images_per_s"] / r["reference"]["images_per_s"], rel=1e-2)
    assert "ours_eager" not in r and "compile" not in r
    if mode == "train":
        assert r["memory_ratio"] == pytest.approx(r["ours"]["peak_memory_mb"] / r["reference"]["peak_memory_mb"],
                                                  rel=1e-2)
    text = format_bench(r)
    assert "ours / reference" in text
    # Each column is explained once; the runtime and why it was chosen appear in one line, not twice.
    yd = r["yardstick"]["dtype"]
    assert f"% {yd} mm: the step's GFLOP/s as a share of a large {yd} matrix product's" in text
    assert sum(line.startswith("runtime ") for line in text.splitlines()) == 1


def test_bench_compiled_side_reports_compile(monkeypatch):
    """With compile on, an eager twin is measured too; a failing compiler falls back (here: forced to fail)."""
    def broken(*args, **kwargs):
        def fail(*a, **k):
            raise RuntimeError("no compiler here")
        return fail

    monkeypatch.setattr(torch, "compile", broken)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        r = run_bench(BenchConfig(mode="train", model="resnet20", batch_size=4, device="cpu", compile=True, steps=1,
                                  warmup=1, rounds=1, memory=False, matmul_size=128))
    assert r["runtime"]["compile"] is True
    assert r["compile"]["fell_back_to_eager"] is True
    assert r["ours_eager"]["images_per_s"] > 0
    assert sum("torch.compile failed" in str(w.message) for w in caught) == 1


def test_reference_is_the_same_network():
    for name in ("resnet20", "resnet56", "resnet18", "resnet50"):
        cfg = model_config(name)
        ref, ours = reference_model(cfg), build_model(cfg)
        assert count_params(ref) == count_params(ours)
        if cfg.family == "cifar":
            assert count_macs(ref, 32) == count_macs(ours, 32)
    # torchvision's v1.5 twin has the extra multiply-adds of the stride moved to the 3x3
    v15 = model_config("resnet50", variant="v1.5")
    assert count_macs(reference_model(v15), 224) == count_macs(build_model(v15), 224)
    # the ImageNet reference is torchvision's network: our weights load into it and give the same outputs
    cfg = model_config("resnet18")
    ours, ref = build_model(cfg).eval(), reference_model(cfg).eval()
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ref(x), ours(x))


def test_matmul_rate_is_positive():
    assert matmul_gflops(torch.float32, n=128, repeats=2) > 0


def test_runtime_defaults_resolve_on_cpu():
    rt = resolve_runtime("cpu")
    assert isinstance(rt, Runtime) and rt.device.type == "cpu"
    assert rt.precision in ("bf16", "fp32")
    assert rt.channels_last  # bf16 and fp32 alike (docs/speed.md)
    assert isinstance(rt.compile, bool)
    assert set(rt.to_dict()) == {"device", "precision", "channels_last", "compile", "cuda_graphs"}
    assert resolve_runtime("cpu", "fp32").autocast_dtype is None
    assert resolve_runtime("cpu", "fp32", compile=True).compile is True
    assert resolve_runtime("cpu", compile=False).compile is False


def test_compile_failure_falls_back_to_eager_with_one_warning(monkeypatch):
    calls = []

    def broken(module, **kwargs):
        def fail(*a, **k):
            calls.append(1)
            raise RuntimeError("inductor: no C++ compiler found\nlong details")
        return fail

    monkeypatch.setattr(torch, "compile", broken)
    rt = resolve_runtime("cpu", "fp32", compile=True)
    net = build_model("resnet20")
    model = rt.compile_model(net)
    assert isinstance(model, CompiledOrEager)
    x = torch.randn(2, 3, 32, 32)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        y1, y2 = model(x), model(x)
    assert len(caught) == 1 and "no C++ compiler found" in str(caught[0].message)
    assert "\n" not in str(caught[0].message)
    assert len(calls) == 1  # not retried after the first failure
    net.eval()
    torch.testing.assert_close(model(x), net(x))
    assert model.state_dict().keys() == net.state_dict().keys()
    assert y1.shape == y2.shape == (2, 10)
    assert resolve_runtime("cpu", "fp32", compile=False).compile_model(net) is net


def test_fast_recipe_resolves_with_a_sane_schedule():
    from resnet.training.recipes import resolve_recipe

    paper = resolve_recipe("paper", "cifar", 20)
    fast = resolve_recipe("fast", "cifar", 20)
    assert fast.name == "fast" and fast.schedule == "onecycle"
    assert fast.tta == "shift" and fast.evaluations == 4 and paper.tta == "center" and paper.evaluations is None
    assert fast.iterations * fast.batch_size <= paper.iterations * paper.batch_size / 4
    lrs = [fast.lr_at(s) for s in range(0, fast.iterations + 1, 50)]
    assert all(0 <= lr <= fast.lr + 1e-12 for lr in lrs)
    assert max(lrs) == pytest.approx(fast.lr, rel=0.01)
    assert lrs[0] < fast.lr and lrs[-1] == pytest.approx(0.0, abs=1e-9)
    peak = lrs.index(max(lrs))
    assert all(a <= b for a, b in zip(lrs[:peak], lrs[1:peak + 1]))  # warm-up rises
    assert all(a >= b for a, b in zip(lrs[peak:], lrs[peak + 1:]))  # then decays
    short = resolve_recipe("fast", "cifar", 20, iterations=400)
    assert short.iterations == 400 and short.lr_at(399) < short.lr_at(100)


def test_bench_data_times_both_pipelines_on_the_same_files(tmp_path, capsys):
    from PIL import Image

    from resnet.bench.loader import make_bench_images

    photos = tmp_path / "photos"
    photos.mkdir()
    g = torch.Generator().manual_seed(0)
    for k in range(2):  # two "photographs", smaller than the output size in one dimension
        Image.fromarray(torch.randint(0, 256, (200, 320, 3), generator=g, dtype=torch.uint8).numpy()).save(
            photos / f"p{k}.png")
    root = make_bench_images(tmp_path / "bench", count=12, size=(256, 256), source=photos)
    files = sorted((root / "train").rglob("*.jpg"))
    assert len(files) == 12 and {f.parent.name for f in files} == {"p0", "p1"}
    assert all(Image.open(f).size == (256, 256) for f in files)
    argv = ["bench", "data", "--data-dir", str(root), "--workers", "0", "--batches", "1", "--batch-size", "4",
            "--repeats", "1"]
    assert main(argv + ["--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert set(r["images_per_s"]) == {"scale", "random_resized_crop", "torchvision"}
    assert all(v > 0 for v in r["images_per_s"].values()) and all(v > 0 for v in r["cpu_ms_per_image"].values())
    assert r["ratio_to_torchvision"]["scale"] == pytest.approx(
        r["images_per_s"]["scale"] / r["images_per_s"]["torchvision"])
    assert r["data"]["files"] == 12 and r["data"]["typical_size"] == "256x256"
    assert main(argv + ["--no-cpu-time"]) == 0
    out = capsys.readouterr().out
    assert "vs torchvision" in out and "torchvision" in out.splitlines()[-1]


def test_bench_data_on_a_missing_folder_is_one_line(tmp_path, capsys):
    assert main(["bench", "data", "--data-dir", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err.strip()
    assert "nowhere" in err and "--data-dir" in err and len(err.splitlines()) == 1


@pytest.mark.parametrize("name", ["resnet20", "resnet50"])
def test_prepare_inference_folds_bn_and_keeps_the_outputs(name):
    from resnet.models.fold import fold_batchnorm

    net = build_model(name)
    with torch.no_grad():  # non-trivial BN statistics, so that folding has something to fold
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    folded = fold_batchnorm(net)
    assert net.training and not folded.training  # the original keeps its mode
    net.eval()
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())  # the original is untouched
    size = 32 if name == "resnet20" else 64
    x = torch.randn(2, 3, size, size)
    rt = resolve_runtime("cpu", "fp32", channels_last=True, compile=False)
    with torch.no_grad():
        torch.testing.assert_close(rt.prepare_inference(net)(x.contiguous(memory_format=torch.channels_last)), net(x),
                                   rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("argv, needle", [
    (["bench", "train", "--model", "plain20"], "plain net"),
    (["bench", "train", "--steps", "0"], "positive"),
    (["bench", "eval", "--model", "resnet21"], "choose one of"),
])
def test_bench_usage_errors_are_one_line(argv, needle, capsys):
    try:
        code = main(argv + ["--quiet"])
    except SystemExit as e:  # refused while parsing (--steps 0)
        code = e.code
    assert code == 2
    err = capsys.readouterr().err
    assert needle in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("name, size, distinct, counts", [
    ("resnet20", 32, 7, [1, 6, 1, 5, 1, 5, 1]),  # stem, 16->16 x6, 16->32 /2, 32->32 x5, 32->64 /2, 64->64 x5, fc
    ("resnet50", 64, None, None),
])
def test_convolution_floor_records_every_layer_once(name, size, distinct, counts):
    from resnet.bench.floor import conv_layers

    layers = conv_layers(build_model(name), 2, size)
    # the layers' own multiply-adds add up to PyTorch's FLOP counter over the whole model
    assert sum(n * layer.macs for layer, n in layers.items()) == 2 * count_macs(build_model(name), size)
    assert [layer.first for layer in layers] == [True] + [False] * (len(layers) - 1)  # the stem sees the image
    if distinct:
        assert len(layers) == distinct and list(layers.values()) == counts
        assert [layer.output[1:] for layer in layers][:3] == [(16, 32, 32), (16, 32, 32), (32, 16, 16)]


def test_convolution_floor_prints_the_floor_and_both_steps(capsys):
    from resnet.bench.floor import main as floor_main

    floor_main(["resnet20", "train", "--batch-size", "2", "--rounds", "1", "--fp32"])
    out = capsys.readouterr().out
    assert "7 distinct layers of 20" in out and "convolution floor:" in out and "at the floor" in out
    assert "16->16   3x3 /1 at 32x32" in out
