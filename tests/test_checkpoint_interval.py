"""Timed checkpoints between evaluations: a run killed without warning loses at most ``checkpoint_minutes`` of
training, not an evaluation interval (a tenth of a campaign run)."""

from __future__ import annotations

import pytest

from resnet.training import trainer
from resnet.training.trainer import TrainConfig, train


@pytest.mark.parametrize("minutes, saved", [(1e-9, [10, 20, 30, 40]), (10.0, [40])])
def test_a_checkpoint_every_interval_besides_each_evaluation(tmp_path, monkeypatch, minutes, saved):
    steps = []
    real = trainer.Trainer._checkpoint

    def spy(self, s, state):
        steps.append(state.step)
        real(self, s, state)

    monkeypatch.setattr(trainer.Trainer, "_checkpoint", spy)
    cfg = TrainConfig(model="resnet20", data="synthetic", iterations=40, batch_size=8, eval_every=40, check_every=10,
                      checkpoint_minutes=minutes, out=str(tmp_path / "run"), progress=False, device="cpu",
                      precision="fp32")
    assert train(cfg).step == 40
    assert steps == saved
