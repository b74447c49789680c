"""One training step: the autotuner's candidates and the benchmark's candidates time ``training.step.train_step``
itself, with the candidate's runtime, so that what is measured is what the trainer runs."""

from __future__ import annotations

import torch

from resnet.bench import candidates
from resnet.models import model_config
from resnet.runtime import named_runtime
from resnet.training import runtime_choice, step


def _counting(monkeypatch) -> list:
    calls = []
    real = step.train_step

    def spy(model, optimizer, x, y, **kwargs):
        calls.append((x.shape[0], kwargs.get("autocast")))
        return real(model, optimizer, x, y, **kwargs)

    monkeypatch.setattr(step, "train_step", spy)
    return calls


def test_the_autotuner_times_the_trainers_step_with_the_candidates_runtime(monkeypatch):
    calls = _counting(monkeypatch)
    rt = named_runtime("fp32-cl", torch.device("cpu"), False)
    run = runtime_choice.workload(model_config("resnet20"), "train", 4).make_step(rt)
    loss = run()
    assert torch.isfinite(loss) and loss.ndim == 0
    assert len(calls) == 1 and calls[0][0] == 4 and calls[0][1] == rt.autocast


def test_the_benchmark_candidates_time_the_trainers_step(monkeypatch):
    calls = _counting(monkeypatch)
    run = candidates._step(model_config("resnet20"), "train", 4, bf16=False, channels_last=True, bn_fold=False,
                           compile=None)
    run()
    run()
    assert len(calls) == 2 and calls[0][0] == 4 and calls[0][1] is not None
