"""The paper's test protocols (centre crop, 10-crop, fully-convolutional multi-scale, multi-crop) at tiny sizes, and the
batched evaluator over an image folder."""

import logging

import numpy as np
import pytest
import torch
import torchvision.transforms.v2.functional as TF
from PIL import Image

import resnet
from resnet.data.normalize import Normalization
from resnet.errors import UsageError
from resnet.evaluation.tta import EvalProtocol, evaluate_folder, predict

SMALL = dict(crop_size=16, resize_size=20, scales=(16, 20, 24))


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny convolutions gain nothing from threads, and on a busy machine each parallel region waits for a core."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return resnet.build_model("resnet20", num_classes=3).eval()


@pytest.fixture
def norm():
    return Normalization.per_channel()


def _image(h, w, seed=0):
    return torch.from_numpy(np.random.default_rng(seed).integers(0, 256, (3, h, w), dtype=np.uint8))


def _input_sizes(model):
    sizes = []
    handle = model.register_forward_hook(lambda m, inp, out: sizes.extend([tuple(inp[0].shape)]))
    return sizes, handle


@pytest.mark.parametrize("tta, views", [("center", 1), ("10crop", 10), ("multiscale", 6), ("multicrop", 30)])
def test_view_counts(tta, views):
    p = EvalProtocol(tta, **SMALL)
    got = p.views(p.prepare(_image(22, 30)))
    assert p.views_per_image == views == sum(len(v) for v in got)
    assert all(v.dtype == torch.uint8 and v.shape[1] == 3 for v in got)


def test_ten_crop_is_four_corners_centre_and_flips(model, norm):
    image = _image(20, 26)
    views = EvalProtocol("10crop", crop_size=16, resize_size=20).views(image)[0]
    crops = TF.five_crop(image, [16, 16])
    expected = torch.stack(list(crops) + [TF.horizontal_flip(c) for c in crops])
    assert torch.equal(views, expected)
    probs = predict(model, norm, image, "10crop", crop_size=16, resize_size=20)
    with torch.no_grad():
        manual = model(norm(expected)).softmax(1).mean(0)
    assert torch.allclose(probs, manual, atol=1e-5) and abs(float(probs.sum()) - 1) < 1e-5


def test_multiscale_runs_the_whole_image_at_each_scale(model, norm):
    sizes, handle = _input_sizes(model)
    try:
        probs = predict(model, norm, _image(20, 30), "multiscale", scales=(16, 24, 32), max_views=64)
    finally:
        handle.remove()
    assert sorted(sizes) == [(2, 3, 16, 24), (2, 3, 24, 36), (2, 3, 32, 48)]  # each scale with its flip
    assert probs.shape == (3,) and abs(float(probs.sum()) - 1) < 1e-5


def test_fully_convolutional_single_scale_equals_the_centre_crop(model, norm):
    image = _image(24, 24, seed=3)
    fully_conv = predict(model, norm, image, "multiscale", scales=(24,), flips=False)
    centre = predict(model, norm, image, "center", crop_size=24, resize_size=24)
    assert torch.allclose(fully_conv, centre, atol=1e-6)


def test_multicrop_combines_ten_crops_at_every_scale(model, norm):
    sizes, handle = _input_sizes(model)
    try:
        probs = predict(model, norm, Image.fromarray(_image(22, 30).permute(1, 2, 0).numpy()), "multicrop", max_views=7,
                        **SMALL)
    finally:
        handle.remove()
    assert sum(s[0] for s in sizes) == 30 and all(s[2:] == (16, 16) for s in sizes)
    assert abs(float(probs.sum()) - 1) < 1e-5


def test_protocol_checks():
    with pytest.raises(UsageError, match="unknown test protocol"):
        EvalProtocol("144crop")
    with pytest.raises(UsageError, match="smaller than the crop"):
        EvalProtocol("10crop", crop_size=224, resize_size=200)


@pytest.fixture
def folder(tmp_path):
    rng = np.random.default_rng(0)
    for split, n in (("train", 2), ("val", 3)):
        for c in ("a", "b", "c"):
            (tmp_path / split / c).mkdir(parents=True)
            for i in range(n):
                w, h = (30, 22) if i % 2 else (22, 26)
                Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(tmp_path / split / c / f"{i}.jpg")
    return tmp_path


@pytest.mark.parametrize("tta", ["center", "10crop", "multiscale", "multicrop"])
def test_evaluate_folder_matches_single_image_predictions(model, norm, folder, tta):
    result = evaluate_folder(model, norm, folder, "val", tta, batch_size=40, workers=0, progress=False, **SMALL)
    assert result["images"] == 9 and result["tta"] == tta and result["skipped"] == 0
    assert 0 <= result["top5_error"] <= result["top1_error"] <= 100
    from resnet.data.imagefolder import open_image_folder
    ds = open_image_folder(folder, "val")
    errors = 0
    for i, (_, label) in enumerate(ds.samples):
        probs = predict(model, norm, ds.read(i), tta, **SMALL)
        errors += int(probs.argmax()) != label
    assert result["top1_error"] == pytest.approx(100 * errors / 9)


def test_evaluate_folder_with_workers_skips_unreadable_files(model, norm, folder, caplog):
    data = (folder / "val" / "b" / "0.jpg").read_bytes()
    (folder / "val" / "b" / "0.jpg").write_bytes(data[: len(data) // 3])
    with caplog.at_level(logging.WARNING, logger="resnet.data"):
        result = evaluate_folder(model, norm, folder, "val", "10crop", batch_size=20, workers=2, progress=False,
                                 crop_size=16, resize_size=20)
    assert result["images"] == 8 and result["skipped"] == 1
    assert sum("0.jpg" in r.getMessage() for r in caplog.records) == 1


def test_cifar_flip_averages_the_softmax_of_image_and_mirror():
    from resnet.evaluation.evaluate import evaluate_images
    from resnet.models import build_model

    torch.manual_seed(0)
    net = build_model("resnet20").eval()
    with torch.no_grad():  # BN statistics away from the identity, so that outputs differ between images
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2)
    images = torch.randint(0, 256, (12, 3, 32, 32), dtype=torch.uint8)
    labels = torch.randint(0, 10, (12,))
    norm = Normalization.per_channel()
    flip = evaluate_images(net, norm, images, labels, batch_size=5, tta="flip")
    with torch.no_grad():
        x = norm(images)
        p = (net(x).softmax(1) + net(x.flip(3)).softmax(1)) / 2
    assert flip["top1_error"] == pytest.approx(100.0 * (p.argmax(1) != labels).float().mean().item())
    assert flip["loss"] == pytest.approx(torch.nn.functional.nll_loss(p.log(), labels).item(), rel=1e-5)
    # a mirror-symmetric image: both views are the same, so flip equals the single view
    sym = torch.cat([images[..., :16], images[..., :16].flip(3)], 3)
    one = evaluate_images(net, norm, sym, labels, batch_size=5)
    both = evaluate_images(net, norm, sym, labels, batch_size=5, tta="flip")
    assert both["top1_error"] == one["top1_error"] and both["loss"] == pytest.approx(one["loss"], rel=1e-5)


def test_cifar_shift_averages_ten_views_cut_like_training():
    """``shift``: the image and its 1-pixel diagonal shifts (zero-filled, as training's padding), each with its mirror;
    computed by hand with torch.roll and a mask, and the softmax averaged over them."""
    from resnet.evaluation.evaluate import cifar_views, evaluate_images
    from resnet.models import build_model

    x = torch.randint(1, 256, (3, 3, 8, 8), dtype=torch.uint8)
    views = cifar_views(x, "shift").view(10, 3, 3, 8, 8)
    assert torch.equal(views[0], x) and torch.equal(views[1], x.flip(3))
    expected = []
    for dy, dx in ((1, 1), (1, -1), (-1, 1), (-1, -1)):  # offset (0, 0) moves the content down-right, and so on
        shifted = torch.roll(x, (dy, dx), (2, 3))
        rows, cols = torch.arange(8) - dy, torch.arange(8) - dx
        inside = ((rows >= 0) & (rows < 8))[:, None] & ((cols >= 0) & (cols < 8))[None, :]
        shifted = shifted * inside
        expected += [shifted, shifted.flip(3)]
    assert torch.equal(views[2:], torch.stack(expected))

    torch.manual_seed(0)
    net = build_model("resnet20").eval()
    images = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8)
    labels = torch.randint(0, 10, (6,))
    norm = Normalization.per_channel()
    result = evaluate_images(net, norm, images, labels, batch_size=4, tta="shift")
    with torch.no_grad():
        p = net(norm(cifar_views(images, "shift"))).softmax(1).view(10, 6, -1).mean(0)
    assert result["top1_error"] == pytest.approx(100.0 * (p.argmax(1) != labels).float().mean().item())
    assert result["loss"] == pytest.approx(torch.nn.functional.nll_loss(p.log(), labels).item(), rel=1e-5)
    with pytest.raises(ValueError, match="shift"):
        evaluate_images(net, norm, images, labels, tta="crop")


def test_flip_is_for_cifar_only(tmp_path, capsys):
    from resnet.cli import main

    assert main(["eval", "--weights", "resnet20-cifar10", "--data", "imagefolder", "--data-dir", str(tmp_path),
                 "--tta", "flip"]) == 2
    assert "10crop" in capsys.readouterr().err
