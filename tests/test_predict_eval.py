"""``Resnet predict`` and ``resnet eval`` decode an image file one way, so the same file gets the same
logits from both (EXIF orientation ignored by both, as torchvision's ImageFolder ignores it)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from resnet.cli import main
from resnet.cli.predict import load_image
from resnet.data.imagefolder import open_image_folder
from resnet.data.normalize import Normalization
from resnet.evaluation.tta import EvalProtocol, _EvalSamples
from resnet.models import build_model
from resnet.weights.format import save_weights

EXIF_ORIENTATION = 0x0112


def _photo(path, pixels: np.ndarray, orientation: int | None = None):
    exif = Image.Exif()
    if orientation is not None:
        exif[EXIF_ORIENTATION] = orientation  # 6: "rotate 90 degrees to display"
    Image.fromarray(pixels).save(path, quality=95, exif=exif.tobytes())


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """DIR/val/{cat,dog}/ with one non-square photo each; the dog's carries an EXIF rotation."""
    root = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(3)
    for name, orientation in (("cat", None), ("dog", 6)):
        (root / "val" / name).mkdir(parents=True)
        pixels = rng.integers(0, 256, (300, 410, 3), dtype=np.uint8)
        _photo(root / "val" / name / "photo.jpg", pixels, orientation)
        _photo(root / f"{name}-no-exif.jpg", pixels)  # the same pixels without the tag
    return root


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    torch.manual_seed(0)
    net = build_model("resnet18", num_classes=2).eval()
    path = tmp_path_factory.mktemp("weights") / "pets"
    save_weights(path, net, Normalization.per_channel(), {"classes": ["cat", "dog"], "data": "imagefolder"})
    return str(path) + ".safetensors", net


def test_the_same_file_gives_the_same_logits_through_predict_and_eval(folder, weights):
    _, net = weights
    norm = Normalization.per_channel()
    dataset = open_image_folder(folder, "val")
    protocol = EvalProtocol("center")  # what `resnet eval --tta center` runs, at the paper's 256 / 224
    for i, (path, _) in enumerate(dataset.samples):
        image, _, failed = _EvalSamples(dataset.samples, protocol, dataset.max_pixels)[i]
        assert failed is None
        evaluated = protocol.views(image)[0]  # eval's one view, as its loader and scorer cut it
        predicted = load_image(path, "imagenet", 224)[None]
        assert torch.equal(evaluated, predicted)
        with torch.no_grad():
            assert torch.equal(net(norm(evaluated)), net(norm(predicted)))


def test_exif_orientation_is_ignored_by_predict_as_by_eval(folder):
    for name in ("cat", "dog"):
        tagged = load_image(folder / "val" / name / "photo.jpg", "imagenet", 224)
        assert torch.equal(tagged, load_image(folder / f"{name}-no-exif.jpg", "imagenet", 224))


def test_predict_and_eval_commands_agree_on_a_file(folder, weights, tmp_path, capsys):
    path, _ = weights
    for name in ("cat", "dog"):
        one = tmp_path / name
        (one / "val" / name).mkdir(parents=True)
        (one / "val" / name / "photo.jpg").write_bytes((folder / "val" / name / "photo.jpg").read_bytes())
        assert main(["eval", "--weights", path, "--data", "imagefolder", "--data-dir", str(one), "--workers", "0",
                     "--precision", "fp32", "--json"]) == 0
        evaluated = json.loads(capsys.readouterr().out)
        assert main(["predict", str(one / "val" / name / "photo.jpg"), "--weights", path, "--top", "2",
                     "--precision", "fp32", "--json"]) == 0
        predicted = json.loads(capsys.readouterr().out)
        prob = {t["class"]: t["prob"] for t in predicted["top"]}[name]
        assert evaluated["images"] == 1
        assert -math.log(prob) == pytest.approx(evaluated["loss"], abs=1e-4)  # prob is printed to 6 decimals
        assert (predicted["top"][0]["class"] == name) == (evaluated["top1_error"] == 0.0)


def test_runtime_flags_change_what_eval_and_predict_run(folder, weights, monkeypatch, capsys):
    """``--runtime`` and ``--compile`` reach the model eval and predict run (torch.compile stubbed: only that it is
    asked, with frozen weights, is checked here)."""
    import resnet.cli.predict as predict
    from resnet.runtime import runtime_name

    asked = []
    monkeypatch.setattr(torch, "compile", lambda module, **kwargs: asked.append(kwargs["options"]) or module)
    path, _ = weights
    argv = ["eval", "--weights", path, "--data", "imagefolder", "--data-dir", str(folder), "--workers", "0", "--json"]
    assert main(argv + ["--runtime", "fp32"]) == 0
    assert json.loads(capsys.readouterr().out)["runtime"] == "fp32" and asked == []
    assert main(argv + ["--runtime", "fp32-cl", "--compile"]) == 0
    assert json.loads(capsys.readouterr().out)["runtime"] == "fp32-cl+compile" and asked == [{"freezing": True}]

    ran = []
    real = predict.predict_files
    monkeypatch.setattr(predict, "predict_files", lambda *a: ran.append(a[4]) or real(*a))
    image = str(folder / "cat-no-exif.jpg")
    assert main(["predict", image, "--weights", path, "--json", "--runtime", "fp32", "--compile"]) == 0
    assert [runtime_name(rt) for rt in ran] == ["fp32+compile"] and len(asked) == 2
    assert main(["predict", image, "--weights", path, "--json", "--runtime", "bf16-nchw", "--precision", "fp32"]) == 0
    assert (ran[1].precision, ran[1].channels_last, ran[1].compile) == ("fp32", False, False)
    capsys.readouterr()
