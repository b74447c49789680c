"""The paper's test views (Sec. 3.4, Tables 2-4) pinned pixel for pixel against an independent computation: the
256/224 centre crop, 10-crop (four corners, centre, and their flips) and the fully-convolutional multi-scale views with
the shorter side at 224, 256, 384, 480, 640, on a small synthetic image at the paper's own sizes.

The reference here does not use tta.py or data/decode.py: sizes by torchvision's rule written out, the resize by
torchvision's ``resize`` (and by PIL, to within one grey level), crops and flips by plain tensor indexing.
"""

import numpy as np
import pytest
import torch
import torchvision.transforms.v2.functional as TF
from PIL import Image
from torch import nn

from resnet.data.normalize import Normalization
from resnet.evaluation.tta import PAPER_SCALES, EvalProtocol, predict

H, W = 240, 320  # a 3:4 image, smaller than every test scale: each view is an upscale


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def image():
    """Smooth gradients plus noise: every crop offset and every flip shows in the pixels."""
    rng = np.random.default_rng(7)
    y, x = np.mgrid[0:H, 0:W]
    base = np.stack([x * 255 / W, y * 255 / H, (x + y) * 255 / (W + H)])
    return torch.from_numpy(np.clip(base + rng.integers(-20, 21, base.shape), 0, 255).astype(np.uint8))


def ref_size(h, w, short):
    """torchvision's rule: the shorter side to ``short``, the longer scaled and truncated."""
    return (short, int(short * w / h)) if h <= w else (int(short * h / w), short)


def ref_resize(image, short):
    return TF.resize(image, list(ref_size(*image.shape[-2:], short)), antialias=True)


def ref_ten(image, c):
    h, w = image.shape[-2:]
    top, left = int(round((h - c) / 2)), int(round((w - c) / 2))
    crops = [image[:, :c, :c], image[:, :c, w - c:], image[:, h - c:, :c], image[:, h - c:, w - c:],
             image[:, top:top + c, left:left + c]]
    return [*crops, *(cr[:, :, torch.arange(c - 1, -1, -1)] for cr in crops)]  # flips by index, not by .flip


def test_the_paper_sizes_are_the_defaults():
    p = EvalProtocol()
    assert PAPER_SCALES == (224, 256, 384, 480, 640)
    assert (p.name, p.crop_size, p.resize_size, p.scales, p.flips) == ("center", 224, 256, PAPER_SCALES, True)


def test_reference_resize_agrees_with_pil(image):
    # the reference itself, checked once against PIL's bilinear filter (antialiased): at most one grey level apart
    for short in (256, 640):
        h, w = ref_size(H, W, short)
        pil = Image.fromarray(image.permute(1, 2, 0).numpy()).resize((w, h), Image.BILINEAR)
        diff = (torch.from_numpy(np.asarray(pil)).permute(2, 0, 1).int() - ref_resize(image, short).int()).abs()
        assert int(diff.max()) <= 1 and float(diff.float().mean()) < 0.05


def test_center_view_is_the_central_224_of_the_256_image(image):
    p = EvalProtocol("center")
    (views,) = p.views(p.prepare(image))
    assert views.shape == (1, 3, 224, 224)
    resized = ref_resize(image, 256)
    assert resized.shape == (3, 256, 341)
    assert torch.equal(views[0], resized[:, 16:240, 58:282])


def test_ten_crop_views_pixel_for_pixel(image):
    p = EvalProtocol("10crop")
    (views,) = p.views(p.prepare(image))
    expected = torch.stack(ref_ten(ref_resize(image, 256), 224))
    assert views.shape == expected.shape == (10, 3, 224, 224)
    assert torch.equal(views, expected)


def test_multiscale_views_pixel_for_pixel(image):
    p = EvalProtocol("multiscale")
    groups = p.views(p.prepare(image))
    sizes = [(224, 298), (256, 341), (384, 512), (480, 640), (640, 853)]
    assert [tuple(g.shape) for g in groups] == [(2, 3, *s) for s in sizes]
    for g, short in zip(groups, PAPER_SCALES):
        whole = ref_resize(image, short)
        assert torch.equal(g[0], whole)
        assert torch.equal(g[1], whole[:, :, torch.arange(whole.shape[-1] - 1, -1, -1)])


def test_multicrop_views_pixel_for_pixel(image):
    p = EvalProtocol("multicrop")
    (views,) = p.views(p.prepare(image))
    expected = torch.stack([v for short in PAPER_SCALES for v in ref_ten(ref_resize(image, short), 224)])
    assert views.shape == expected.shape == (50, 3, 224, 224)
    assert torch.equal(views, expected)


@pytest.mark.parametrize("tta", ["10crop", "multiscale", "multicrop"])
def test_scores_average_the_softmax_over_the_reference_views(tta):
    """``predict``'s scores are the mean over the reference views of a tiny fully-convolutional net's softmax."""
    small = dict(crop_size=16, resize_size=20, scales=(16, 20, 28))
    rng = np.random.default_rng(3)
    img = torch.from_numpy(rng.integers(0, 256, (3, 18, 24), dtype=np.uint8))
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)).eval()
    norm = Normalization.per_channel()
    if tta == "10crop":
        views = ref_ten(ref_resize(img, 20), 16)
    elif tta == "multiscale":
        views = [v for s in small["scales"] for r in [ref_resize(img, s)] for v in (r, r.flip(-1))]
    else:
        views = [v for s in small["scales"] for v in ref_ten(ref_resize(img, s), 16)]
    with torch.no_grad():
        manual = torch.stack([net(norm(v[None].contiguous()))[0].softmax(0) for v in views]).mean(0)
        got = predict(net, norm, img, tta, **small)
    assert len(views) == EvalProtocol(tta, **small).views_per_image
    torch.testing.assert_close(got, manual, rtol=1e-5, atol=1e-6)
