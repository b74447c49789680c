"""CIFAR data in every supported form, built here as tiny real-format files (no download, no shared data)."""

import dataclasses
import hashlib
import io
import os
import pickle
import struct
import tarfile
import urllib.error
from typing import ClassVar

import numpy as np
import pytest
import torch
from PIL import Image

from resnet.data import cifar, embedded, official
from resnet.data.cifar import CIFAR10_CLASSES
from resnet.data.sources import data_source
from resnet.errors import UsageError


def load_split(dataset, data_dir, split, **kwargs):
    """A split as every part of the package opens one: through the registry."""
    return data_source(dataset).open(split, data_dir, **kwargs)


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("RESNET_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("RESNET_DATA", str(tmp_path / "default-data"))


class Python2Pickler(pickle._Pickler):
    """Writes bytes as Python 2 ``str`` (BINSTRING), as the official files of 2009 do."""

    dispatch: ClassVar[dict] = dict(pickle._Pickler.dispatch)

    def save_bytes(self, obj):
        self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_bytes


def dump(obj, path, python2=False):
    """A pickle like the official ones: protocol 2 or 3 (numpy's array builder named in a text GLOBAL opcode); the
    Python 2 files also call numpy._core by its old name, numpy.core."""
    if python2:
        f = io.BytesIO()
        Python2Pickler(f, protocol=2).dump(obj)
        data = f.getvalue().replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    else:
        data = pickle.dumps(obj, protocol=3)
    path.write_bytes(data)


def write_cifar10_python(root, per_batch=100, n_test=40, seed=0):
    """``root/cifar-10-batches-py`` with 5 training batches and a test batch of unique random images."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    # bytes keys and names, as pickles written by Python 2 read back
    meta = {b"label_names": [c.encode() for c in CIFAR10_CLASSES], b"num_cases_per_batch": per_batch}
    dump(meta, folder / "batches.meta", python2=True)
    data = {}
    for name, n in [(f"data_batch_{i}", per_batch) for i in range(1, 6)] + [("test_batch", n_test)]:
        images = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        labels = rng.permutation(np.arange(n) % 10).tolist()
        dump({"batch_label": name, "data": images, "labels": labels, "filenames": [f"{i}.png" for i in range(n)]},
             folder / name, python2=name in ("data_batch_2", "test_batch"))
        data[name] = (images, labels)
    train = [data[f"data_batch_{i}"] for i in range(1, 6)]
    return {"train": (np.concatenate([x for x, _ in train]).reshape(-1, 3, 32, 32), [y for _, ys in train for y in ys]),
            "test": (data["test_batch"][0].reshape(-1, 3, 32, 32), data["test_batch"][1])}


def make_tar(path, folder, arcname):
    with tarfile.open(path, "w:gz") as tar:
        tar.add(folder, arcname=arcname)


def assert_round_trip(s, images, labels):
    assert s.images.dtype == torch.uint8 and s.labels.dtype == torch.int64 and s.images.is_contiguous()
    assert torch.equal(s.images, torch.from_numpy(images)) and s.labels.tolist() == list(labels)
    assert s.classes == list(CIFAR10_CLASSES)


def test_python_format_round_trip(tmp_path):
    expect = write_cifar10_python(tmp_path)
    assert_round_trip(load_split("cifar10", tmp_path, "trainval"), *expect["train"])
    assert_round_trip(load_split("cifar10", tmp_path, "test", download=False), *expect["test"])
    # the batches folder itself is a data dir too
    assert_round_trip(load_split("cifar10", tmp_path / "cifar-10-batches-py", "test"), *expect["test"])


def test_cifar100_python_format_uses_fine_labels(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    names = [f"class{i:03d}" for i in range(100)]
    dump({"fine_label_names": names, "coarse_label_names": [f"super{i}" for i in range(20)]}, folder / "meta")
    rng = np.random.default_rng(1)
    for name, n in (("train", 1000), ("test", 100)):
        images = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        dump({"data": images, "fine_labels": list(range(100)) * (n // 100), "coarse_labels": [0] * n}, folder / name)
    s = load_split("cifar100", tmp_path, "test")
    assert s.images.shape == (100, 3, 32, 32) and s.labels.tolist() == list(range(100)) and s.classes == names
    assert torch.bincount(load_split("cifar100", tmp_path, "val").labels).tolist() == [1] * 100


def official_archive(tmp_path, monkeypatch, trust=True):
    expect = write_cifar10_python(tmp_path / "src")
    archive_dir = tmp_path / "archive"
    archive_dir.mkdir()
    archive = archive_dir / "cifar-10-python.tar.gz"
    make_tar(archive, tmp_path / "src" / "cifar-10-batches-py", "cifar-10-batches-py")
    if trust:  # the fake archive's own md5 stands in for the real one's
        md5 = hashlib.md5(archive.read_bytes()).hexdigest()
        monkeypatch.setitem(official.OFFICIAL, "cifar10", dataclasses.replace(official.OFFICIAL["cifar10"], md5=md5))
    return archive_dir, expect


def test_official_archive_round_trip_and_cache(tmp_path, monkeypatch):
    archive_dir, expect = official_archive(tmp_path, monkeypatch)
    assert_round_trip(load_split("cifar10", archive_dir, "trainval"), *expect["train"])
    assert list((tmp_path / "cache" / "decoded").glob("cifar-10-python.tar.gz-*.npz"))
    # the second load reads the cache, not the archive
    monkeypatch.setattr(official, "read_archive", lambda *a: pytest.fail("archive read again"))
    assert_round_trip(load_split("cifar10", archive_dir, "test"), *expect["test"])


def test_archive_with_wrong_md5_is_refused(tmp_path, monkeypatch):
    archive_dir, _ = official_archive(tmp_path, monkeypatch, trust=False)
    with pytest.raises(UsageError, match=r"cifar-10-python.tar.gz has md5 [0-9a-f]{32}, not c58f3010"):
        load_split("cifar10", archive_dir, "train")


def test_malicious_pickle_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    write_cifar10_python(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").write_bytes(pickle.dumps({"data": Exploit()}, protocol=2))
    with pytest.raises(UsageError, match=r"data_batch_3 is not a CIFAR pickle .*refused to load (posix|os)\.system"):
        load_split("cifar10", tmp_path, "train")
    assert not marker.exists()


def test_truncated_pickle_names_the_file(tmp_path):
    write_cifar10_python(tmp_path)
    batch = tmp_path / "cifar-10-batches-py" / "data_batch_4"
    batch.write_bytes(batch.read_bytes()[:5000])
    with pytest.raises(UsageError, match="data_batch_4 is not a CIFAR pickle"):
        load_split("cifar10", tmp_path, "train")


def test_held_out_split_is_balanced_disjoint_complete_and_fixed(tmp_path):
    expect = write_cifar10_python(tmp_path)  # 500 training images, 50 per class
    splits = {(split, seed): load_split("cifar10", tmp_path, split, seed=seed)
              for split in ("train", "val") for seed in (0, 1)}
    for split in ("train", "val"):  # the training seed does not move the split; neither does calling again
        assert torch.equal(splits[split, 0].images, splits[split, 1].images)
        assert torch.equal(splits[split, 0].labels, splits[split, 1].labels)
    assert torch.equal(load_split("cifar10", tmp_path, "val").images, splits["val", 0].images)
    train, val = splits["train", 0], splits["val", 0]
    assert torch.bincount(val.labels).tolist() == [5] * 10 and torch.bincount(train.labels).tolist() == [45] * 10
    key = lambda s: {bytes(x.numpy()) for x in s.images}  # every fake image is distinct
    assert not key(train) & key(val)
    assert key(train) | key(val) == {bytes(x) for x in expect["train"][0]}


def write_tree(root, classes, per_class=3, size=32, parts=("train", "test"), seed=0):
    """An ImageFolder tree of lossless PNGs (and one JPEG per class); returns {part: [(class, pixels HWC)]}."""
    rng = np.random.default_rng(seed)
    written = {}
    for part in parts:
        for cls in classes:
            (root / part / cls).mkdir(parents=True)
            for i in range(per_class):
                pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
                path = root / part / cls / (f"{i:04d}.jpg" if i == 0 else f"{i:04d}.png")
                Image.fromarray(pixels).save(path)
                if path.suffix == ".jpg":  # lossy: the expected pixels are what the file decodes to
                    pixels = np.asarray(Image.open(path).convert("RGB"))
                written.setdefault(part, []).append((cls, pixels))
    return written


def check_tree(s, written, classes):
    assert s.classes == list(classes)
    order = sorted(written, key=lambda r: classes.index(r[0]))  # class order, then file name (written in name order)
    assert s.labels.tolist() == [classes.index(c) for c, _ in order]
    assert torch.equal(s.images, torch.from_numpy(np.stack([p for _, p in order]).transpose(0, 3, 1, 2)))


def test_image_folder_in_cifar10_order_and_as_tar_gz(tmp_path):
    tree = tmp_path / "tree"
    written = write_tree(tree, list(reversed(CIFAR10_CLASSES)))  # created in reverse; read in CIFAR-10's order
    (tree / "train" / "cat" / "README.txt").write_text("not an image")
    (tree / "train" / "cat" / "._0001.png").write_bytes(b"macOS resource fork")
    for split, part in (("trainval", "train"), ("test", "test")):
        check_tree(load_split("cifar10", tree, split), written[part], list(CIFAR10_CLASSES))
    # the same tree as a .tar.gz, found by scanning the data dir, under a top-level folder
    (tmp_path / "dl").mkdir()
    make_tar(tmp_path / "dl" / "my-images.tar.gz", tree, "cifar10-png")
    for split, part in (("trainval", "train"), ("test", "test")):
        check_tree(load_split("cifar10", tmp_path / "dl", split), written[part], list(CIFAR10_CLASSES))


def test_image_folder_with_other_names_is_sorted(tmp_path):
    names = [f"kind{9 - i}" for i in range(10)]
    written = write_tree(tmp_path, names, parts=("train",))
    check_tree(load_split("cifar10", tmp_path, "trainval"), written["train"], sorted(names))
    with pytest.raises(UsageError, match="no test images .* --protocol val, resnet eval --split val"):
        load_split("cifar10", tmp_path, "test")


def test_image_folder_with_wrong_class_count_is_refused(tmp_path):
    write_tree(tmp_path, ["a", "b"], parts=("train",))
    with pytest.raises(UsageError, match="has 2 classes but cifar10 has 10"):
        load_split("cifar10", tmp_path, "train")


def test_wrongly_sized_and_corrupt_images_name_the_file(tmp_path):
    write_tree(tmp_path / "big", list(CIFAR10_CLASSES), per_class=1, size=40, parts=("train",))
    with pytest.raises(UsageError, match=r"train/airplane/0000.jpg is 40x40, not 32x32"):
        load_split("cifar10", tmp_path / "big", "train")
    write_tree(tmp_path / "bad", list(CIFAR10_CLASSES), per_class=2, parts=("train",))
    (tmp_path / "bad" / "train" / "dog" / "0001.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(UsageError, match=r"cannot decode .*train/dog/0001.png"):
        load_split("cifar10", tmp_path / "bad", "train")


def test_missing_data_offline_says_what_to_download(tmp_path, monkeypatch):
    def offline(url, dest):
        raise urllib.error.URLError("no route to host")

    monkeypatch.setattr(official, "download_file", offline)
    for dataset, archive in (("cifar10", "cifar-10-python.tar.gz"), ("cifar100", "cifar-100-python.tar.gz")):
        with pytest.raises(UsageError) as e:
            load_split(dataset, tmp_path / "empty", "train")
        message = str(e.value)
        assert f"https://www.cs.toronto.edu/~kriz/{archive}" in message and "--data-dir" in message
        assert str(tmp_path / "empty") in message and "no route to host" in message and "\n" not in message
        assert len(message) < 300 and not (tmp_path / "empty").exists()  # a mistyped folder is not left behind
    with pytest.raises(UsageError, match="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"):
        load_split("cifar10", None, "test", download=False)  # the default data dir, no download tried


def test_download_then_load(tmp_path, monkeypatch):
    source_dir, expect = official_archive(tmp_path, monkeypatch)
    fetched = []

    def fake_download(url, dest):
        fetched.append(url)
        dest.write_bytes((source_dir / "cifar-10-python.tar.gz").read_bytes())

    monkeypatch.setattr(official, "download_file", fake_download)
    assert_round_trip(load_split("cifar10", tmp_path / "new", "test"), *expect["test"])
    assert fetched == [official.OFFICIAL["cifar10"].url] and (tmp_path / "new" / "cifar-10-python.tar.gz").is_file()


def test_embedded_subset():
    train, val = load_split("embedded", None, "train"), load_split("embedded", None, "val")
    assert train.images.shape == (5000, 3, 32, 32) and val.images.shape == (1000, 3, 32, 32)
    for s, n in ((train, 500), (val, 100)):
        assert s.images.dtype == torch.uint8 and s.labels.dtype == torch.int64 and s.images.is_contiguous()
        assert s.classes == list(CIFAR10_CLASSES) and torch.bincount(s.labels).tolist() == [n] * 10
    names = {p: set() for p in ("train", "val")}
    with tarfile.open(embedded.asset_path()) as tar:
        for m in tar.getmembers():
            part, cls, file = m.name.split("/")
            names[part].add((cls, file))
    assert len(names["train"]) == 5000 and len(names["val"]) == 1000 and not names["train"] & names["val"]
    assert not {bytes(x.numpy()) for x in train.images} & {bytes(x.numpy()) for x in val.images}
    assert len(load_split("embedded", None, "trainval")) == 6000
    with pytest.raises(UsageError, match="the embedded dataset has no test images .* --protocol val, resnet eval --split val"):
        load_split("embedded", None, "test")


def test_synthetic_shapes():
    test = load_split("synthetic", None, "test", seed=3)
    assert test.images.shape == (10000, 3, 32, 32) and test.images.dtype == torch.uint8 and len(test.classes) == 10
    assert torch.equal(test.images[:8], load_split("synthetic", None, "test", seed=3).images[:8])
    assert not torch.equal(test.images[:8], load_split("synthetic", None, "test", seed=4).images[:8])
    val = load_split("synthetic", None, "val")
    assert val.images.shape == (5000, 3, 32, 32) and torch.bincount(val.labels).tolist() == [500] * 10


def test_unknown_names_are_usage_errors():
    with pytest.raises(UsageError, match="unknown dataset 'mnist'; choose one of: cifar10, cifar100"):
        load_split("mnist", None, "train")
    with pytest.raises(UsageError, match="unknown split 'dev'"):
        load_split("cifar10", None, "dev")


def test_archive_names_pick_the_dataset():
    assert cifar._tar_dataset("cifar10-train-jpeg.tar.gz") == "cifar10"
    assert cifar._tar_dataset("CIFAR-100_png.tgz") == "cifar100"
    assert cifar._tar_dataset("images.tar") is None


def test_image_folder_with_its_own_val_folder_keeps_it(tmp_path):
    written = write_tree(tmp_path, list(CIFAR10_CLASSES), per_class=2, parts=("train", "val"))
    check_tree(load_split("cifar10", tmp_path, "train"), written["train"], list(CIFAR10_CLASSES))
    check_tree(load_split("cifar10", tmp_path, "val"), written["val"], list(CIFAR10_CLASSES))
    assert len(load_split("cifar10", tmp_path, "trainval")) == 40


def test_a_report_names_its_images_with_their_jpeg_quality(tmp_path):
    """The form of the CIFAR images a report measures on: JPEG files and the quality they were encoded at (read from
    their quantization tables), lossless files, or the official files."""
    from resnet.data.describe import OFFICIAL, describe_cifar_files, jpeg_quality

    rng = np.random.default_rng(0)
    for quality in (75, 90):
        tree = tmp_path / f"q{quality}"
        for cls in CIFAR10_CLASSES:
            (tree / "train" / cls).mkdir(parents=True)
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(tree / "train" / cls / "0.jpg",
                                                                                      quality=quality)
        make_tar(tmp_path / f"cifar10-q{quality}.tar.gz", tree, "cifar10")
        assert describe_cifar_files("cifar10", tree) == f"JPEG files of quality {quality} (`q{quality}`)"
        assert describe_cifar_files("cifar10", tmp_path / f"cifar10-q{quality}.tar.gz") == \
            f"JPEG files of quality {quality} (`cifar10-q{quality}.tar.gz`)"
    with Image.open(tmp_path / "q75" / "train" / "cat" / "0.jpg") as img:
        tables = {k: [min(255, v + 1) for v in t] for k, t in img.quantization.items()}
    assert jpeg_quality(tables) is None  # not a standard table: no quality is claimed
    png = tmp_path / "png"
    write_tree(png, CIFAR10_CLASSES, per_class=2, parts=("train",))
    (png / "train" / "airplane" / "0000.jpg").unlink()
    assert describe_cifar_files("cifar10", png) == "PNG files (`png`)"
    write_cifar10_python(tmp_path / "official", per_batch=10, n_test=10)
    assert describe_cifar_files("cifar10", tmp_path / "official") == OFFICIAL
    assert describe_cifar_files("cifar10", tmp_path / "nothing") is None
