"""A run's records as types: the lines of metrics.jsonl (``Evaluation``, ``Final``) written byte for byte as the
trainer always wrote them and read back, lines of earlier versions read with what they lack as None; a checkpoint
(``Checkpoint``, ``RunState``) saved as the same plain dict as before and loaded from one written before the types
existed; a run's ``TrainConfig`` as the ``resnet train`` flags that give it back."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, replace

import pytest
import torch

from resnet.cli import build_parser
from resnet.runs.spec import Options, RunSpec
from resnet.training.checkpoint import Checkpoint, RunState, load_checkpoint, load_latest_checkpoint, save_checkpoint
from resnet.training.config import TrainConfig
from resnet.training.metrics import Evaluation, Final, Metrics, dumps, parse, read_metrics
from resnet.training.run_dir import RunDir

# Lines as the trainer wrote them before the records had types (a fast-recipe run: the final line has its 10-view
# test; a paper-recipe run: none).
EVALUATION = ('{"step": 2000, "epoch": 5.698, "lr": 0.09496250000000002, "train_loss": 1.34795458984375, '
              '"train_error": 38.20859375, "val_error": 28.14, "val_top5_error": 2.36, "val_loss": 0.8393400344848633, '
              '"images_per_s": 674.2, "seconds": 382.5}')
FINAL_TTA = ('{"final": true, "step": 8, "best_val_error": 89.2, "val_error": 89.8, "val_top5_error": 48.7, '
             '"eval_split": "val", "images_per_s": 40.86843046933803, "model": "resnet20", "tta": "shift", '
             '"val_error_tta": 89.8, "val_top5_error_tta": 48.8, "seconds": 98.2}')
FINAL = ('{"final": true, "step": 64000, "best_val_error": 11.38, "val_error": 11.7, "val_top5_error": 0.46, '
         '"eval_split": "val", "images_per_s": 793.1, "model": "resnet20", "seconds": 18444.6}')
# A final line of an earlier version (results/records: no best error, no rate, another order).
OLD_FINAL = ('{"final": true, "step": 32000, "val_error": 10.96, "eval_split": "val", "tta": "shift", '
             '"val_error_tta": 9.64, "model": "resnet20"}')


@pytest.mark.parametrize("line", [EVALUATION, FINAL_TTA, FINAL])
def test_a_record_writes_the_exact_line_it_was_read_from(line):
    assert dumps(parse(json.loads(line))) == line + "\n"


def test_a_record_of_an_earlier_version_reads_with_what_it_lacks_as_none():
    final = parse(json.loads(OLD_FINAL))
    assert final == Final(step=32000, val_error=10.96, eval_split="val", tta="shift", val_error_tta=9.64,
                          model="resnet20")
    assert final.best_val_error is None and final.seconds is None
    first = parse({"step": 400, "seconds": 0.8, "val_error": 50.0, "train_error": 50.0, "colour": "blue"})
    assert first == Evaluation(step=400, seconds=0.8, val_error=50.0, train_error=50.0)  # unknown keys: left out


def test_a_metrics_file_reads_as_its_evaluations_and_its_final_record(tmp_path):
    run = RunDir(tmp_path)
    assert read_metrics(tmp_path) == Metrics() and not Metrics().finished and Metrics().step == 0
    (tmp_path / "metrics.jsonl").write_text(EVALUATION + "\n" + '{"step": 4000, "epo' + "\n")  # cut by a crash
    assert read_metrics(tmp_path).step == 2000 and read_metrics(tmp_path).final is None
    run.truncate_metrics(2000)
    assert (tmp_path / "metrics.jsonl").read_text() == EVALUATION + "\n"  # the kept lines as they were written
    run.log(parse(json.loads(FINAL)))
    metrics = run.metrics()
    assert metrics.finished and metrics.step == 64000 and metrics.seconds == 18444.6
    assert [e.step for e in metrics.curve] == [2000]
    assert (tmp_path / "metrics.jsonl").read_text() == EVALUATION + "\n" + FINAL + "\n"
    run.truncate_metrics(1000)  # a resume before the first evaluation: nothing kept, the final line neither
    assert (tmp_path / "metrics.jsonl").read_text() == ""


def _checkpoint() -> Checkpoint:
    net = torch.nn.Linear(3, 2)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    return Checkpoint(model=net.state_dict(), optimizer=optimizer.state_dict(),
                      state=RunState(step=7, best_val_error=12.5, seconds=3.25), rng={"torch": torch.get_rng_state()},
                      model_config={"name": "linear"}, config={"iterations": 10})


def test_a_checkpoint_is_the_same_plain_dict_as_before(tmp_path):
    ckpt = _checkpoint()
    ckpt.save(tmp_path)
    contents = load_checkpoint(tmp_path)
    assert list(contents) == ["model", "optimizer", "state", "rng", "model_config", "config"]
    assert contents["state"] == {"step": 7, "best_val_error": 12.5, "plateau_drops": 0, "plateau_best": math.inf,
                                 "plateau_bad": 0, "seconds": 3.25}
    again = Checkpoint.load(tmp_path)
    assert again.state == ckpt.state and again.config == ckpt.config and again.model_config == ckpt.model_config
    assert all(torch.equal(a, b) for a, b in zip(again.model.values(), ckpt.model.values()))


def test_a_checkpoint_written_before_the_types_loads(tmp_path):
    """The dict the trainer saved before (its ``state`` as ``asdict`` of the run state), and an older one without
    the settings it was saved with and with a state of fewer fields."""
    ckpt = _checkpoint()
    old = {"model": ckpt.model, "optimizer": ckpt.optimizer, "state": asdict(ckpt.state), "rng": ckpt.rng,
           "model_config": ckpt.model_config, "config": ckpt.config}
    save_checkpoint(tmp_path, old)
    assert load_latest_checkpoint(tmp_path).state == ckpt.state
    older = {"model": ckpt.model, "optimizer": ckpt.optimizer, "state": {"step": 7, "best_val_error": 12.5},
             "rng": ckpt.rng}
    torch.save(older, tmp_path / "checkpoint.pt")  # no checksum either
    loaded = Checkpoint.load(tmp_path)
    assert loaded.state == RunState(step=7, best_val_error=12.5) and loaded.config is None


@pytest.mark.parametrize("cfg", [
    RunSpec("plain56", seed=1).train_config(Options(name="x", budget="fast-32k")),
    replace(RunSpec("resnet110").train_config(Options(name="x", budget="paper", data="cifar10")), out="/tmp/x",
            resume=True, device="cuda", precision="bf16", channels_last=True, compile=False, progress=False,
            cuda_graphs=True, data_dir="/data", workers=4),
    TrainConfig(epochs=1.5, lr=0.05, warmup=0, allow_changes=("lr", "iterations"), tensorboard=True, sync_bn=True,
                deterministic=True, zero_init_residual=True, num_classes=20, shortcut="B", channels_last=False),
])
def test_a_train_config_is_given_back_by_its_command_line(cfg):
    """What ``resnet gpu-campaign`` starts each run with: the flags ``resnet train`` parses back into the same config
    (the run folder and the loader processes the command line would choose itself are left at the config's)."""
    args = vars(build_parser().parse_args(["train", *cfg.arguments()]))
    args.update(out=args["out"] or "runs/run", workers=4 if args["workers"] is None else args["workers"])
    assert TrainConfig(**{k: v for k, v in args.items() if k in TrainConfig.__dataclass_fields__}) == cfg
