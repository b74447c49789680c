"""Image-folder datasets: every file mode to RGB, bad files skipped (or fatal when strict), layout errors, the paper's
augmentation, deterministic resumable batches, PCA lighting, the cached training statistics."""

import io
import logging
import os

import numpy as np
import pytest
import torch
from PIL import Image

from resnet.data import decode
from resnet.data.imagefolder import FolderBatches, imagenet_class_names, open_image_folder
from resnet.data.normalize import Normalization
from resnet.data.transforms import Lighting, TrainAugment, normalize_batch, sample_rng, train_statistics
from resnet.errors import UsageError

AUG = TrainAugment(size=16, scale_range=(18, 24))  # the paper's policy at a tiny size


def _photo(w, h, seed):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


def _write_modes(folder, seed=0):
    """One file per real-world kind: RGB JPEG, grayscale, CMYK, palette with transparency, RGBA, 16-bit, WebP, BMP."""
    folder.mkdir(parents=True, exist_ok=True)
    img = _photo(40, 30, seed)
    img.save(folder / "rgb.jpg", quality=90)
    img.convert("L").save(folder / "gray.JPEG")
    img.convert("CMYK").save(folder / "cmyk.jpg")
    pal = img.convert("P")
    pal.info["transparency"] = 0
    pal.save(folder / "palette.png", transparency=0)
    rgba = img.convert("RGBA")
    rgba.putalpha(0)
    rgba.save(folder / "alpha.png")
    Image.fromarray(np.full((30, 40), 32768, dtype=np.uint16)).save(folder / "deep.png")
    img.save(folder / "web.webp")
    img.save(folder / "bitmap.bmp")


@pytest.fixture
def tree(tmp_path):
    for k, c in enumerate(("ant", "bee", "cat")):
        _write_modes(tmp_path / "train" / c, seed=k)
        _write_modes(tmp_path / "val" / c, seed=10 + k)
    return tmp_path


def test_every_mode_reads_as_rgb(tree):
    ds = open_image_folder(tree, "train")
    assert ds.classes == ["ant", "bee", "cat"] and ds.class_names == ds.classes and ds.flavour == "folder"
    assert len(ds) == 24 and not ds.skipped
    for i, (path, _) in enumerate(ds.samples):
        img = ds.read(i)
        assert img.mode == "RGB" and img.size == (40, 30)
        a = np.asarray(img)
        if path.endswith("alpha.png"):  # fully transparent: composited on white
            assert (a == 255).all()
        if path.endswith("deep.png"):  # 16-bit mid-grey scaled, not clipped to white
            assert abs(int(a[0, 0, 0]) - 128) <= 1
    x = decode.load_crop(ds.samples[0][0], (0, 0, 40, 30), (12, 16))
    assert x.shape == (3, 12, 16) and x.dtype == torch.uint8


def _bad_files(folder):
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "notes.txt").write_text("not an image")
    (folder / "fake.jpg").write_text("this is text, not a JPEG")
    buf = io.BytesIO()
    _photo(40, 30, 9).save(buf, "JPEG", quality=95)
    (folder / "truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    buf = io.BytesIO()
    _photo(40, 30, 8).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    data[60:200] = bytes(140)  # inside the image data: the zlib stream and its CRC break
    (folder / "corrupt.png").write_bytes(bytes(data))
    _photo(200, 200, 7).save(folder / "bomb.png")  # over the test's pixel limit


SCAN_TIME = ("empty.jpg", "notes.txt", "fake.jpg")
DECODE_TIME = ("truncated.jpg", "corrupt.png", "bomb.png")


def test_bad_files_are_skipped_once_and_counted(tree, caplog):
    _bad_files(tree / "train" / "bee")
    with caplog.at_level(logging.WARNING, logger="resnet.data"):
        ds = open_image_folder(tree, "train", max_pixels=5000)
    lines = [r.getMessage() for r in caplog.records]
    for name in SCAN_TIME:
        assert sum(name in line for line in lines) == 1
    assert "skipped 3 of 30 files" in lines[-1]
    assert len(ds) == 27  # the decode-time cases pass the cheap scan

    caplog.clear()
    batches = FolderBatches(ds, Normalization.per_channel(), batch_size=len(ds), workers=0, augment=AUG)
    with caplog.at_level(logging.WARNING, logger="resnet.data"):
        it = batches.iterate(0)
        ys = [next(it)[1] for _ in range(2 * batches.steps_per_epoch)]  # two epochs: warned once per file
    lines = [r.getMessage() for r in caplog.records]
    for name in DECODE_TIME:
        assert sum(name in line and "skipping" in line for line in lines) == 1, name
    assert any("6 unusable files skipped so far (3 found while decoding" in line for line in lines)  # epoch's end
    assert {os.path.basename(p) for p, _ in batches.skipped} == set(SCAN_TIME + DECODE_TIME)
    assert all(((y >= 0) & (y < 3)).all() for y in ys)  # replaced by readable samples


@pytest.mark.parametrize("name", SCAN_TIME + DECODE_TIME)
def test_strict_mode_makes_a_bad_file_fatal(tmp_path, name):
    for c in ("a", "b"):
        _write_modes(tmp_path / "train" / c)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    _bad_files(scratch)
    os.replace(scratch / name, tmp_path / "train" / "a" / name)
    with pytest.raises(UsageError, match=name):
        ds = open_image_folder(tmp_path, "train", strict=True, max_pixels=5000)
        next(FolderBatches(ds, Normalization.per_channel(), batch_size=len(ds), workers=0, augment=AUG).iterate(0))


def test_layout_errors_name_the_folder_and_the_fix(tree):
    (tree / "train" / "dog").mkdir()
    with pytest.raises(UsageError, match=r"train/dog has no images; add images or remove the folder"):
        open_image_folder(tree, "train")
    (tree / "train" / "dog").rmdir()
    _write_modes(tree / "val" / "eel")
    with pytest.raises(UsageError, match=r"val/eel is a class the training set does not have.*add .*train/eel"):
        open_image_folder(tree, "val")
    flat = tree / "flat"
    (flat / "val").mkdir(parents=True)
    _photo(8, 8, 0).save(flat / "val" / "x.JPEG")
    with pytest.raises(UsageError, match="images directly; sort them into one sub-folder per class"):
        open_image_folder(flat, "val")
    with pytest.raises(UsageError, match="not the ImageNet layout"):
        open_image_folder(tree, "train", flavour="imagenet")
    with pytest.raises(UsageError, match="no such data folder"):
        open_image_folder(tree / "missing")


def test_imagenet_flavour_names_the_1000_classes(tmp_path):
    buf = io.BytesIO()
    _photo(8, 8, 0).save(buf, "PNG")
    wnids = [f"n{10_000_000 + 7 * k:08d}" for k in range(1000)]
    for w in wnids:
        (tmp_path / "train" / w).mkdir(parents=True)
        (tmp_path / "train" / w / "a.png").write_bytes(buf.getvalue())
    ds = open_image_folder(tmp_path, "train")
    assert ds.flavour == "imagenet" and ds.classes == wnids
    assert ds.class_names == imagenet_class_names()
    assert ds.class_names[0] == "tench" and ds.class_names[1] == "goldfish"


def _batches(ds, seed=0, **kw):
    kw.setdefault("workers", 0)
    return FolderBatches(ds, Normalization.per_channel(), batch_size=8, seed=seed, augment=AUG, **kw)


def test_batches_shapes_ranges_determinism_and_resume(tree):
    ds = open_image_folder(tree, "train")
    b = _batches(ds)
    assert b.steps_per_epoch == 3
    it = b.iterate(0)
    first = [next(it) for _ in range(5)]
    x, y = first[0]
    assert x.shape == (8, 3, 16, 16) and x.dtype == torch.float32 and y.shape == (8,)
    lo = (0 - torch.tensor((0.485, 0.456, 0.406))) / torch.tensor((0.229, 0.224, 0.225))
    hi = (1 - torch.tensor((0.485, 0.456, 0.406))) / torch.tensor((0.229, 0.224, 0.225))
    assert (x >= lo.view(1, 3, 1, 1) - 1e-5).all() and (x <= hi.view(1, 3, 1, 1) + 1e-5).all()
    again = next(_batches(ds).iterate(0))
    assert torch.equal(again[0], x) and torch.equal(again[1], y)
    other = next(_batches(ds, seed=1).iterate(0))
    assert not torch.equal(other[0], x)
    resumed = next(_batches(ds).iterate(4))  # step 4 = epoch 1, batch 1
    assert torch.equal(resumed[0], first[4][0]) and torch.equal(resumed[1], first[4][1])
    halves = [next(_batches(ds, rank=r, world_size=2).iterate(0)) for r in (0, 1)]
    assert torch.equal(torch.cat([h[0] for h in halves]), x)
    assert torch.equal(torch.cat([h[1] for h in halves]), y)


def test_worker_processes_give_the_same_batches(tree):
    """Crops, flips and lighting of a sample depend on (seed, epoch, index), not on the process that draws it."""
    ds = open_image_folder(tree, "train")
    norm = Normalization.mean_image(torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8))
    kw = dict(augment=AUG, lighting=Lighting.imagenet())
    main = FolderBatches(ds, norm, 8, workers=0, **kw)
    workers = FolderBatches(ds, norm, 8, workers=2, **kw)
    it0, it2 = main.iterate(2), workers.iterate(2)
    for _ in range(2):
        (x0, y0), (x2, y2) = next(it0), next(it2)
        assert torch.equal(x0, x2) and torch.equal(y0, y2)


def test_crop_policies_stay_inside_the_image():
    rng = sample_rng(0, 0, 0)
    for policy in ("scale", "random_resized_crop"):
        aug = TrainAugment(policy)
        for w, h in ((500, 375), (375, 500), (224, 224), (1000, 100)):
            for _ in range(50):
                x0, y0, x1, y1 = aug.box(w, h, rng)
                assert 0 <= x0 < x1 <= w + 1e-6 and 0 <= y0 < y1 <= h + 1e-6
                if policy == "scale":  # a 224 crop of the image resized to a shorter side in [256, 480]
                    assert 224 / 480 - 1e-6 <= (x1 - x0) / min(w, h) <= 224 / 256 + 1e-6
    with pytest.raises(UsageError, match="unknown augmentation"):
        TrainAugment("cutout")


def test_large_jpeg_decodes_at_reduced_size(tmp_path):
    path = tmp_path / "big.jpg"
    _photo(1600, 1200, 0).resize((1600, 1200)).save(path, quality=80)
    img = decode.load_rgb(str(path), min_short_side=256)
    assert img.size == (400, 300)  # 1/4 scale: the shorter side stays >= 256
    img = decode.load_rgb(str(path), min_short_side=700)
    assert img.size == (1600, 1200)  # 1/2 would give 600 < 700
    x = decode.load_crop(str(path), (0, 0, 1600, 1200), (150, 200))  # needs only 1/8
    assert x.shape == (3, 150, 200)


def test_pca_lighting_shifts_each_image_by_a_bounded_constant():
    x = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8)
    norm = Normalization.mean_image(torch.randint(0, 256, (10, 3, 8, 8), dtype=torch.uint8))
    lighting = Lighting.imagenet()
    alphas = torch.randn(4, 3, generator=torch.Generator().manual_seed(0))
    plain = normalize_batch(x, norm)
    lit = normalize_batch(x, norm, lighting, alphas)
    assert lit.shape == x.shape and torch.allclose(plain, norm(x), atol=1e-5)
    delta = lit - plain
    assert (delta.abs() > 1e-4).any()
    assert torch.allclose(delta, delta[:, :, :1, :1].expand_as(delta), atol=1e-5)  # the same shift on every pixel
    bound = (alphas.abs() * lighting.alphastd * lighting.eigval).sum(1) + 1e-6  # |eigvec| entries <= 1
    assert (delta.abs().amax(dim=(1, 2, 3)) <= bound).all()
    # (x/255 + shift - mean) / std: the normalised image plus the shift over the std
    offset = lighting.shift(alphas) / norm.std.view(1, 3)
    assert torch.allclose(lit, norm(x) + offset[:, :, None, None], atol=1e-5)


def test_train_statistics_are_computed_once_and_cached(tree, tmp_path, monkeypatch):
    ds = open_image_folder(tree, "train")
    stats = train_statistics(ds, samples=10, size=12)
    assert stats.mean_image.shape == (3, 12, 12) and stats.images == 10
    assert torch.allclose(stats.channel_mean, stats.mean_image.mean((1, 2)), atol=1e-4)
    assert (stats.eigval[:-1] >= stats.eigval[1:]).all()
    assert torch.allclose(stats.eigvec.T @ stats.eigvec, torch.eye(3), atol=1e-4)
    assert list((tree / ".resnet-cache").glob("stats-train-10x12-*.safetensors"))
    monkeypatch.setattr("resnet.data.transforms.compute_statistics", lambda *a, **k: pytest.fail("not cached"))
    cached = train_statistics(ds, samples=10, size=12)
    assert torch.equal(cached.mean_image, stats.mean_image) and torch.equal(cached.eigvec, stats.eigvec)
    assert cached.normalization("mean_image").kind == "mean_image"
    assert cached.normalization("mean_std").kind == "mean_std"
    assert cached.lighting().alphastd == 0.1
    monkeypatch.undo()
    # a data folder that cannot be written to: the statistics go to the user's cache
    (tree / ".resnet-cache").rename(tree / "old")
    (tree / ".resnet-cache").write_text("a file where the cache folder would go")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "home-cache"))
    monkeypatch.delenv("RESNET_CACHE", raising=False)  # it would take precedence (the one cache root, files.py)
    train_statistics(ds, samples=10, size=12)
    assert list((tmp_path / "home-cache" / "resnet").glob("stats-*/stats-train-10x12-*.safetensors"))


def test_training_data_of_a_folder_gives_the_trainer_its_parts(tree):
    from types import SimpleNamespace

    import resnet
    from resnet.training.data import load_training_data

    cfg = SimpleNamespace(data="imagefolder", data_dir=str(tree), protocol="val", seed=0, workers=0, progress=False)
    rt = SimpleNamespace(device=torch.device("cpu"), autocast_dtype=None, channels_last=False)
    dist = SimpleNamespace(enabled=False, is_main=True, rank=0, world_size=1)
    data = load_training_data(cfg, rt, dist)
    classes, norm, make_batches, evaluate, info = data.classes, data.norm, data.make_batches, data.evaluate, data.info
    assert classes == ["ant", "bee", "cat"] and norm.kind == "mean_image" and info["train_images"] == 24
    batches = make_batches(4, False)
    x, y = next(batches.iterate(0))
    assert x.shape == (4, 3, 224, 224) and batches.lighting is not None and batches.augment.policy == "scale"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = evaluate(resnet.build_model("resnet20", num_classes=3))
    finally:
        torch.set_num_threads(threads)
    assert result["images"] == 24 and result["tta"] == "center"
    with pytest.raises(UsageError, match="needs --data-dir"):
        load_training_data(SimpleNamespace(**{**vars(cfg), "data_dir": None}), rt, dist)


def test_a_recipe_with_a_cifar_test_protocol_is_refused_on_image_folders_before_training(tree, capsys):
    from resnet.cli import main

    out = tree / "run"
    assert main(["train", "--recipe", "fast", "--data", "imagefolder", "--data-dir", str(tree), "--iterations", "1",
                 "--workers", "0", "--no-progress", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "shift" in err and "--recipe paper" in err and len(err.strip().splitlines()) == 1
    assert not (out / "checkpoint.pt").exists()
