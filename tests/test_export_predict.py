"""Export (ONNX, TorchScript, safetensors) round trips, ``resnet predict`` on images of every kind, and torch.hub."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from resnet.cli import main
from resnet.cli.predict import load_image
from resnet.data.normalize import Normalization
from resnet.errors import UsageError
from resnet.models import MODELS, build_model
from resnet.weights import Weights, load_weights, save_weights
from resnet.weights.export import TOLERANCE, check_batch, export
from resnet.weights.importers import CIFAR10_CLASSES, load_any

REPO = Path(__file__).resolve().parents[1]


def _bn_stats(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return model.eval()


@pytest.fixture(scope="module")
def cifar_weights(tmp_path_factory):
    """resnet20 in the project format, with CIFAR-10 classes and per-channel normalisation."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("w") / "resnet20.safetensors"
    save_weights(path, _bn_stats(build_model("resnet20")), Normalization.per_channel(),
                 {"classes": list(CIFAR10_CLASSES)})
    return path


def _images(weights: Weights, n: int, size: int) -> torch.Tensor:
    """Smooth random images (not white noise), normalised as the exported net expects."""
    g = torch.Generator().manual_seed(3)
    small = torch.randint(0, 256, (n, 3, 8, 8), generator=g).float()
    images = torch.nn.functional.interpolate(small, size=size, mode="bilinear").round().clamp(0, 255).byte()
    return weights.normalization(images)


@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.jit.load's deprecation notice
def test_export_onnx_and_torchscript_round_trip(tmp_path, cifar_weights, capsys):
    import onnxruntime as ort

    torch.manual_seed(0)
    tv = _bn_stats(torchvision.models.resnet18())
    torch.save(tv.state_dict(), tmp_path / "r18.pth")
    cases = [(load_weights(cifar_weights), None, 32), (load_any(tmp_path / "r18.pth"), 64, 64)]
    for w, input_size, size in cases:
        x = _images(w, 5, size)
        with torch.no_grad():
            expected = w.model(x)
        name = w.model.config.name
        onnx = export(w, tmp_path / f"{name}.onnx", input_size=input_size)  # raises above TOLERANCE: see below
        got = ort.InferenceSession(str(onnx.path), providers=["CPUExecutionProvider"]).run(None, {"input": x.numpy()})[0]
        assert np.abs(got - expected.numpy()).max() <= TOLERANCE
        ts = export(w, tmp_path / f"{name}.pt", input_size=input_size)
        assert ts.format == "torchscript"
        with torch.no_grad():
            torch.testing.assert_close(torch.jit.load(str(ts.path))(x), expected, atol=TOLERANCE, rtol=0)
        info = json.loads((tmp_path / f"{name}.onnx.json").read_text())
        assert info["classes"] == w.classes and info["model"]["name"] == name
        assert info["input"]["shape"] == ["batch", 3, size, size]
        assert info["input"]["normalization"]["mean"] == pytest.approx([0.485, 0.456, 0.406])
        assert info["check"]["max_abs_diff"] == onnx.max_abs_diff


@pytest.mark.filterwarnings("ignore::FutureWarning")
@pytest.mark.parametrize("suffix", [".onnx", ".pt"])
def test_export_refuses_a_file_that_differs_beyond_the_tolerance(tmp_path, cifar_weights, monkeypatch, suffix):
    """The check inside ``export`` can fail: with a tolerance below any difference, nothing is written."""
    import resnet.weights.export as lib_export

    monkeypatch.setattr(lib_export, "TOLERANCE", -1.0)
    with pytest.raises(UsageError, match="differs from PyTorch by"):
        export(load_weights(cifar_weights), tmp_path / f"r20{suffix}")
    assert not (tmp_path / f"r20{suffix}").exists()


def test_export_cli_and_safetensors_conversion(tmp_path, capsys):
    torch.manual_seed(0)
    ours = _bn_stats(build_model("resnet20"))
    state = {f"module.{'linear.' + k[3:] if k.startswith('fc.') else k}": v for k, v in ours.state_dict().items()}
    torch.save({"best_prec1": 91.7, "state_dict": state}, tmp_path / "r20.th")
    assert main(["export", str(tmp_path / "r20.th"), "--format", "onnx", "--out", str(tmp_path / "r20.onnx")]) == 0
    out = capsys.readouterr().out
    assert "max |logit diff| = " in out and (tmp_path / "r20.onnx.json").exists()
    assert main(["export", str(tmp_path / "r20.th"), "--out", str(tmp_path / "conv.safetensors")]) == 0
    w = load_weights(tmp_path / "conv.safetensors")
    assert w.classes == list(CIFAR10_CLASSES) and w.meta["source"]["format"] == "akamaster"
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(w.model(x), ours(x))
    assert main(["export", str(tmp_path / "r20.th"), "--out", str(tmp_path / "r20.xyz")]) == 2
    assert "cannot tell the export format from" in capsys.readouterr().err  # not "unknown export format None"
    assert main(["export", str(tmp_path / "r20.th"), "--model", "resnet56", "--out", str(tmp_path / "x.onnx")]) == 2
    assert "not the requested resnet56" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "r20.th"), "--opset", "99", "--out", str(tmp_path / "x.onnx")]) == 2
    assert "--opset 99 is not supported" in capsys.readouterr().err
    assert not (tmp_path / "x.onnx").exists()


def test_cli_constants_match_the_library():
    import resnet.cli.export as cli_export
    import resnet.weights.export as lib_export

    assert (cli_export.FORMATS, cli_export.DEFAULT_OPSET) == (lib_export.FORMATS, lib_export.DEFAULT_OPSET)


def test_check_batch_is_normalised():
    w = Weights(build_model("resnet20"), Normalization.per_channel())
    x = check_batch(w, 3)
    assert x.shape == (3, 3, 32, 32) and x.min() < -1.5 and x.max() > 1.5


# ---------------------------------------------------------------------------------------------------------------------
# predict


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 256, (48, 40, 3), dtype=np.uint8))
    rgb.convert("L").save(d / "gray.png")
    rgb.convert("CMYK").save(d / "cmyk.jpg")
    (d / "sub").mkdir()
    rgb.convert("P").save(d / "sub" / "palette.png")
    rgba = rgb.convert("RGBA")
    rgba.putalpha(100)
    rgba.save(d / "rgba.png")
    gray8 = rng.integers(0, 256, (30, 50), dtype=np.uint8)
    Image.fromarray(gray8, "L").save(d / "gray8.png")
    Image.fromarray(gray8.astype(np.uint16) * 257).save(d / "sub" / "gray16.png")  # the same picture in 16 bits
    (d / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"not a jpeg" * 20)
    (d / "notes.txt").write_text("not an image, skipped in folders")
    return d


def test_images_of_every_mode_become_rgb_of_the_input_size(image_dir):
    assert Image.open(image_dir / "sub" / "gray16.png").mode.startswith("I")
    for name in ("gray.png", "cmyk.jpg", "sub/palette.png", "rgba.png", "sub/gray16.png"):
        x = load_image(image_dir / name, "cifar", 32)
        assert x.shape == (3, 32, 32) and x.dtype == torch.uint8
        assert load_image(image_dir / name, "imagenet", 224).shape == (3, 224, 224)
    # 16-bit data is scaled to 8 bits, not clipped
    assert torch.equal(load_image(image_dir / "sub" / "gray16.png", "cifar", 32),
                       load_image(image_dir / "gray8.png", "cifar", 32))
    # alpha is composited over white: a fully transparent image is white
    Image.new("RGBA", (10, 10), (0, 0, 0, 0)).save(image_dir / "clear.png")
    assert load_image(image_dir / "clear.png", "cifar", 32).min() == 255
    (image_dir / "clear.png").unlink()


def test_predict_json_lines_with_a_corrupt_file(image_dir, cifar_weights, capsys):
    rc = main(["predict", str(image_dir), "--weights", str(cifar_weights), "--json", "--top", "3", "--batch-size", "4"])
    assert rc == 1
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    by_name = {Path(r["file"]).name: r for r in lines}
    assert sorted(by_name) == ["cmyk.jpg", "corrupt.jpg", "gray.png", "gray16.png", "gray8.png", "palette.png", "rgba.png"]
    assert "error" in by_name["corrupt.jpg"] and "top" not in by_name["corrupt.jpg"]
    for name, r in by_name.items():
        if name == "corrupt.jpg":
            continue
        probs = [t["prob"] for t in r["top"]]
        assert len(probs) == 3 and probs == sorted(probs, reverse=True) and sum(probs) <= 1 + 1e-5
        assert all(t["class"] in CIFAR10_CLASSES for t in r["top"])
    assert by_name["gray16.png"]["top"] == by_name["gray8.png"]["top"]


def test_predict_matches_the_model_and_reports_errors_in_text(tmp_path, image_dir, cifar_weights, capsys):
    w = load_weights(cifar_weights)
    img = np.random.default_rng(1).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    Image.fromarray(img).save(tmp_path / "x.png")
    with torch.no_grad():
        probs = w.model(w.normalization(torch.from_numpy(img).permute(2, 0, 1)[None])).softmax(1)[0]
    rc = main(["predict", str(tmp_path / "x.png"), str(image_dir / "corrupt.jpg"), str(tmp_path / "missing.png"),
               "--weights", str(cifar_weights), "--top", "1", "--json", "--precision", "fp32"])
    assert rc == 1
    first, corrupt, missing = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert first["top"][0]["class"] == CIFAR10_CLASSES[int(probs.argmax())]
    assert first["top"][0]["prob"] == pytest.approx(float(probs.max()), abs=1e-6)
    assert missing["error"] == "no such file" and "cannot read image" in corrupt["error"]

    rc = main(["predict", str(image_dir / "gray.png"), str(image_dir / "corrupt.jpg"), "--weights", str(cifar_weights)])
    out, err = capsys.readouterr()
    assert rc == 1 and out.startswith(str(image_dir / "gray.png")) and out.count("%") == 5
    assert f"{image_dir / 'corrupt.jpg'}: error: cannot read image" in err


def test_predict_usage_errors(tmp_path, cifar_weights, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["predict", str(tmp_path / "empty"), "--weights", str(cifar_weights)]) == 2
    assert "no image files under" in capsys.readouterr().err
    with pytest.raises(SystemExit) as refused:  # refused while parsing
        main(["predict", str(tmp_path), "--weights", str(cifar_weights), "--top", "0"])
    assert refused.value.code == 2 and "--top" in capsys.readouterr().err
    assert main(["predict", str(tmp_path), "--weights", str(cifar_weights), "--model", "resnet56"]) == 2
    assert "not the requested resnet56" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------------------------
# torch.hub


def test_hub_entries_are_the_model_names():
    hub = torch.hub._import_module("hubconf", str(REPO / "hubconf.py"))
    entries = [f for f in dir(hub) if callable(getattr(hub, f)) and not f.startswith("_")]  # torch.hub.list's rule
    assert sorted(entries) == sorted(MODELS) and hub.dependencies == ["torch"]


def test_hub_load_local(tmp_path, cifar_weights):
    m = torch.hub.load(str(REPO), "resnet20", source="local")
    assert m.config.name == "resnet20" and m.config.shortcut == "A"
    m = torch.hub.load(str(REPO), "resnet50", source="local", variant="v1.5", num_classes=7)
    assert m.config.variant == "v1.5" and m.fc.out_features == 7
    m = torch.hub.load(str(REPO), "resnet20", source="local", weights=str(cifar_weights))
    w = load_weights(cifar_weights)
    assert m.classes == list(CIFAR10_CLASSES) and torch.equal(m.normalization.mean, w.normalization.mean)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(m(x), w.model(x))
    with pytest.raises(UsageError, match="not the requested resnet56"):
        torch.hub.load(str(REPO), "resnet56", source="local", weights=str(cifar_weights))
