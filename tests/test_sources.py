"""One registry of data sources (``resnet.data.sources``) that every part of the package asks."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
import torch

import resnet
from resnet.cli import build_parser, main
from resnet.data.sources import NAMES, PROTOCOLS, SOURCES, all_protocols, data_source, default_source, names
from resnet.errors import UsageError
from resnet.evaluation.evaluate import evaluate_images
from resnet.evaluation.evaluator import evaluator
from resnet.evaluation.tta import EvalProtocol

PACKAGE = Path(resnet.__file__).parent


def test_lookup_kinds_and_subsets():
    assert NAMES == ("cifar10", "cifar100", "embedded", "synthetic", "imagefolder", "imagenet")
    assert names("memory") == ("cifar10", "cifar100", "embedded", "synthetic")
    assert names("folder") == ("imagefolder", "imagenet")
    assert names(cifar10_images=True) == ("cifar10", "embedded", "synthetic")  # what the paper's CIFAR runs accept
    assert data_source("imagenet").flavour == "imagenet" and data_source("cifar100").num_classes == 100
    assert default_source("cifar").name == "cifar10" and default_source("imagenet").name == "imagefolder"
    with pytest.raises(UsageError, match="unknown dataset 'mnist'; choose one of: cifar10, cifar100"):
        data_source("mnist")


def test_every_protocol_of_the_vocabulary_is_implemented_and_no_other():
    net = resnet.build_model("resnet20").eval()
    x, y = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8), torch.arange(4)
    norm = data_source("embedded").open("val").images[:8]  # any images give a normalisation
    from resnet.data.normalize import Normalization
    norm = Normalization.mean_image(norm)
    for tta in PROTOCOLS["memory"]:
        assert evaluate_images(net, norm, x, y, tta=tta)["images"] == 4
    with pytest.raises(ValueError, match="unknown CIFAR test protocol"):
        evaluate_images(net, norm, x, y, tta="10crop")
    for tta in PROTOCOLS["folder"]:
        assert EvalProtocol(tta).views_per_image >= 1
    with pytest.raises(UsageError, match="unknown test protocol 'shift'"):
        EvalProtocol("shift")
    assert set(all_protocols()) == set(PROTOCOLS["memory"]) | set(PROTOCOLS["folder"])


def test_a_source_refuses_another_kinds_protocol_in_one_line():
    with pytest.raises(UsageError, match=r"--tta 10crop is not a test protocol of --data embedded; it has center, flip, shift"):
        data_source("embedded").check_protocol("10crop")
    with pytest.raises(UsageError, match="--tta shift is not a test protocol of --data imagefolder"):
        data_source("imagefolder").check_protocol("shift")
    with pytest.raises(UsageError, match="--data imagenet needs --data-dir DIR"):
        data_source("imagenet").open("val", None)


def test_command_line_choices_come_from_the_registry():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices
    tta = next(a for a in sub["eval"]._actions if a.dest == "tta")
    assert tuple(tta.choices) == all_protocols()
    for command in ("train", "eval", "reproduce", "campaign"):
        data = next(a for a in sub[command]._actions if a.dest == "data")
        for name in NAMES:
            assert data.type(name) == name
        with pytest.raises(Exception, match="unknown dataset 'mnist'"):
            data.type("mnist")


def test_resnet_eval_refuses_a_folder_protocol_on_cifar(capsys):
    code = main(["eval", "--weights", "resnet20-cifar10", "--data", "embedded", "--tta", "10crop"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "not a test protocol of --data embedded" in err


def test_the_trainers_evaluator_and_resnet_eval_measure_the_same(tmp_path, capsys):
    """One evaluator: the error a run logs at its end is the error `resnet eval --weights RUN` prints."""
    torch.set_num_threads(1)
    out = tmp_path / "run"
    assert main(["train", "--model", "resnet20", "--data", "embedded", "--iterations", "6", "--batch-size", "16",
                 "--runtime", "fp32", "--out", str(out), "--no-progress"]) == 0
    final = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()][-1]
    capsys.readouterr()
    assert main(["eval", "--weights", str(out / "last.safetensors"), "--data", "embedded", "--runtime", "fp32",
                 "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["images"] == 1000 and result["top1_error"] == pytest.approx(final["val_error"], abs=1e-9)


def test_the_evaluator_shards_like_one_process(monkeypatch):
    """Each rank's share, summed, is the whole split's result (the trainer under torchrun): two ranks in one process,
    the all-gather replaced by a recorder; the torchrun test in test_fault_tolerance.py runs real processes."""
    from resnet.data.cifar import ImageSet
    from resnet.data.normalize import Normalization
    from resnet.evaluation import evaluate as evaluate_module

    source = data_source("embedded")
    full = source.open("val")
    val = ImageSet(full.images[:64], full.labels[:64], full.classes)
    norm = Normalization.mean_image(val.images)
    torch.manual_seed(0)
    net = resnet.build_model("resnet20").eval()
    whole = evaluator(source, val, norm, "val", device=torch.device("cpu"), batch_size=16)(net)
    parts = {}
    for rank in (0, 1):
        # what this rank hands to the all-gather is its own share; it gets its share's result back
        monkeypatch.setattr(evaluate_module, "gather", lambda items, world_size, rank=rank: parts.setdefault(rank, items))
        share = evaluator(source, val, norm, "val", device=torch.device("cpu"), batch_size=16, rank=rank,
                          world_size=2)(net)
        assert share["images"] == 32
    assert whole == evaluate_module.tally(parts[0] + parts[1]) and whole["images"] == 64  # to the bit
    with pytest.raises(UsageError, match="not a test protocol"):
        evaluator(source, val, norm, "val", device=torch.device("cpu"))(net, "multiscale")


# Modules that implement or describe a dataset may name it; the rest ask the registry.
IMPLEMENTERS = {"data/sources.py", "data/cifar.py", "data/embedded.py", "data/imagefolder.py"}
DATASET_NAMES = set(NAMES) - {"imagenet"}  # "imagenet" is also a model family ("cifar" / "imagenet")


def test_no_module_outside_the_data_readers_branches_on_a_dataset_name():
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        if rel in IMPLEMENTERS:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Compare):
                consts = [c for side in [node.left, *node.comparators] for c in ast.walk(side)
                          if isinstance(c, ast.Constant) and c.value in DATASET_NAMES]
                found += [f"{rel}:{node.lineno} compares with {c.value!r}" for c in consts]
    assert not found, "\n".join(found)


def test_the_branch_test_sees_a_comparison():
    tree = ast.parse('if cfg.data in ("cifar10", "x"):\n    pass\n')
    compares = [n for n in ast.walk(tree) if isinstance(n, ast.Compare)]
    assert any(isinstance(c, ast.Constant) and c.value == "cifar10" for n in compares for c in ast.walk(n))


def test_every_source_has_a_kind_with_protocols():
    for s in SOURCES.values():
        assert s.kind in PROTOCOLS and "center" in s.protocols and s.about
