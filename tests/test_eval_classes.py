"""Evaluation labels follow the weights' own class list, whatever classes the data folder holds."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from resnet.cli import main
from resnet.data.imagefolder import imagenet_class_names, imagenet_wnids
from resnet.errors import UsageError
from resnet.evaluation.classes import class_index, match_classes

ELECTRIC_RAY, TENCH = "n01496331", "n01440764"  # ImageNet classes 5 and 0


def test_the_shipped_synset_list_is_imagenets_label_order():
    wnids, names = imagenet_wnids(), imagenet_class_names()
    assert len(wnids) == 1000 and wnids == sorted(wnids) and len(set(wnids)) == 1000
    assert wnids.index(TENCH) == 0 and names[0] == "tench"
    assert wnids.index(ELECTRIC_RAY) == 5 and names[5] == "electric ray"


def test_imagenet_classes_are_found_by_synset_or_by_name():
    names = imagenet_class_names()
    index = class_index(names)  # torchvision's weights carry the human-readable names
    assert index[ELECTRIC_RAY] == index["electric ray"] == 5
    assert index["n02012849"] == index["crane bird"] == 134 and index["n03126707"] == index["crane"] == 517
    assert class_index(["a", "a", "b"]) == {"b": 2}  # a name two classes share finds neither
    subset = class_index([TENCH, ELECTRIC_RAY])  # weights trained on a folder of two synsets
    assert subset == {TENCH: 0, ELECTRIC_RAY: 1, "tench": 0, "electric ray": 1}


def test_match_classes_maps_a_subset_and_refuses_unknown_classes(caplog):
    cifar = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    assert match_classes(["cat", "truck"], cifar, 10) == [3, 9]
    with pytest.raises(UsageError, match="2 of 3 classes .*'beach', 'forest'.*--allow-class-mismatch"):
        match_classes(["beach", "cat", "forest"], cifar, 10, where="PHOTOS/val")
    assert match_classes(["beach", "cat", "forest"], cifar, 10, allow_mismatch=True) == [0, 1, 2]
    assert "sorted order" in caplog.text
    assert match_classes(["x", "y"], None, 10) == [0, 1]  # weights without class names: nothing to check
    with pytest.raises(UsageError, match="3 classes but"):
        match_classes(["x", "y", "z"], None, 2)


def _images(folder, n=2):
    folder.mkdir(parents=True)
    for i in range(n):
        Image.new("RGB", (40, 30), (40 * i, 90, 200)).save(folder / f"{i}.jpg")


@pytest.fixture(scope="module")
def always_electric_ray(tmp_path_factory):
    """ResNet-18 weights for ImageNet (torchvision's class names) whose every prediction is class 5."""
    from resnet.data.normalize import Normalization
    from resnet.models import build_model
    from resnet.weights.format import save_weights

    net = build_model("resnet18")
    with torch.no_grad():
        net.fc.weight.zero_()
        net.fc.bias.fill_(-10.0)
        net.fc.bias[5] = 10.0
    path = tmp_path_factory.mktemp("weights") / "ray"
    save_weights(path, net, Normalization.per_channel(), {"classes": imagenet_class_names(), "data": "imagenet"})
    return str(path) + ".safetensors"


def _eval(capsys, *argv):
    code = main(["eval", *argv, "--workers", "0", "--json"])
    out, err = capsys.readouterr()
    return code, (json.loads(out) if code == 0 else None), err


@pytest.mark.parametrize("folders, error", [
    ([ELECTRIC_RAY], 0.0),  # a partial ImageNet val: the one folder is class 5, not class 0
    ([TENCH, ELECTRIC_RAY], 50.0),
    (["electric ray"], 0.0),  # a folder named by the class's name
])
def test_partial_imagenet_folder_is_scored_against_the_weights_classes(tmp_path, capsys, always_electric_ray,
                                                                       folders, error):
    for name in folders:
        _images(tmp_path / "val" / name)
    _images(tmp_path / "train" / "n09999999")  # a train folder of other classes changes nothing
    code, result, err = _eval(capsys, "--weights", always_electric_ray, "--data", "imagenet",
                              "--data-dir", str(tmp_path))
    assert code == 0, err
    assert result["top1_error"] == error and result["images"] == 2 * len(folders)


def test_unknown_classes_are_one_line_errors_unless_allowed(tmp_path, capsys, always_electric_ray):
    _images(tmp_path / "val" / "holiday")
    code, _, err = _eval(capsys, "--weights", always_electric_ray, "--data", "imagenet", "--data-dir", str(tmp_path))
    assert code == 2 and "'holiday'" in err and "--allow-class-mismatch" in err and len(err.strip().splitlines()) == 1
    code, result, err = _eval(capsys, "--weights", always_electric_ray, "--data", "imagenet", "--data-dir",
                              str(tmp_path), "--allow-class-mismatch")
    assert code == 0 and result["top1_error"] == 100.0  # the folder taken as class 0 (tench), predicted 5


def test_a_cifar10_model_is_not_scored_on_unrelated_photo_classes(tmp_path, capsys):
    for name in ("beach", "mountains"):
        _images(tmp_path / "val" / name, 1)
    code, _, err = _eval(capsys, "--weights", "resnet20-cifar10", "--data", "imagefolder", "--data-dir", str(tmp_path))
    assert code == 2 and "'beach', 'mountains'" in err and len(err.strip().splitlines()) == 1
    photos = tmp_path / "cats"
    _images(photos / "val" / "cat", 1)
    code, result, err = _eval(capsys, "--weights", "resnet20-cifar10", "--data", "imagefolder", "--data-dir",
                              str(photos))
    assert code == 0 and result["images"] == 1, err
