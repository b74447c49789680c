"""One base for the package's errors (``UsageError``), with kinds a library caller can tell apart; the
command line still prints each as one line and exits 2."""

from __future__ import annotations

import pytest
import torch

from resnet.cli import main
from resnet.data.imagefolder import open_image_folder
from resnet.errors import CheckpointError, DataError, Divergence, UsageError
from resnet.training.checkpoint import load_checkpoint, save_checkpoint


def test_every_kind_is_a_usage_error():
    assert all(issubclass(kind, UsageError) for kind in (DataError, CheckpointError, Divergence))
    assert len({DataError, CheckpointError, Divergence}) == 3 and not issubclass(DataError, CheckpointError)


def test_missing_data_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="no such data folder"):
        open_image_folder(tmp_path / "nowhere", "train")


def test_a_damaged_checkpoint_is_a_checkpoint_error(tmp_path):
    save_checkpoint(tmp_path, {"step": 1, "w": torch.ones(2)})
    (tmp_path / "checkpoint.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path / "checkpoint.pt")


def test_the_command_line_prints_a_data_error_as_one_line(tmp_path, capsys):
    code = main(["eval", "--weights", "resnet20-cifar10", "--data", "imagefolder", "--data-dir", str(tmp_path / "x"),
                 "--workers", "0"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("resnet eval: error: ") and len(err.strip().splitlines()) == 1
