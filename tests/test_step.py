"""One training step and one optimiser helper, used by the trainer, the speed benchmark and the
gradient-flow experiment alike."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from resnet.models import build_model
from resnet.runtime import resolve_runtime
from resnet.training.fast import FAST
from resnet.training.step import build_sgd, train_step


def test_train_step_is_the_recipes_loss_and_optimiser():
    """Nesterov and label smoothing (the fast recipe) reach the update, as the trainer runs it."""
    torch.manual_seed(0)
    a, b = build_model("resnet20"), build_model("resnet20")
    b.load_state_dict(a.state_dict())
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    opt_a = build_sgd(a.parameters(), FAST)
    assert opt_a.defaults["nesterov"] and opt_a.defaults["weight_decay"] == FAST.weight_decay
    opt_b = torch.optim.SGD(b.parameters(), lr=FAST.lr, momentum=0.9, weight_decay=5e-4, nesterov=True)
    for _ in range(2):
        loss, logits = train_step(a, opt_a, x, y, label_smoothing=FAST.label_smoothing)
        expected = F.cross_entropy(b(x), y, label_smoothing=0.1)
        opt_b.zero_grad()
        expected.backward()
        opt_b.step()
        assert torch.allclose(loss, expected.detach()) and not loss.requires_grad and logits.shape == (8, 10)
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.allclose(p, q)


def test_the_benchmark_times_the_trainers_step(monkeypatch):
    import resnet.bench.speed as speed
    import resnet.experiments.gradients as gradients
    import resnet.training.trainer as trainer
    from resnet.training import step

    assert speed.train_step is step.train_step is trainer.train_step is gradients.train_step
    calls = []

    def counted(*args, **kwargs):
        calls.append(kwargs)
        return step.train_step(*args, **kwargs)

    monkeypatch.setattr(speed, "train_step", counted)
    rt = resolve_runtime("cpu", "fp32", False, False)
    side = speed.build_side("ours", build_model("resnet20").config, "train", 4, rt)
    side.step()
    assert len(calls) == 1
