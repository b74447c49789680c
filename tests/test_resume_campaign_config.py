"""Exact resume after kill -9 in the configuration the campaign trains with, not only fp32/NCHW/the paper's recipe
(test_fault_tolerance.py): bf16 where this CPU runs it natively (else fp32), channels_last, the fused BN + ReLU kernel
(models/fused.py: CPU training in channels_last), the ``fast`` recipe's one-cycle schedule, and a timed checkpoint
between evaluations (``checkpoint_minutes``). The run kills itself with SIGKILL during a chosen step, after a timed
checkpoint: the step is the test's choice, not the clock's."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from resnet.training.checkpoint import Checkpoint

RUNTIME = "bf16" if torch.ops.mkldnn._is_mkldnn_bf16_supported() else "fp32-cl"  # both channels_last
CONFIG = dict(model="resnet20", data="synthetic", recipe="fast", iterations=30, batch_size=8, eval_every=30,
              check_every=10, checkpoint_minutes=1e-9, device="cpu", runtime=RUNTIME, deterministic=True,
              progress=False, workers=0)
ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")

# One training run in a fresh process: SIGKILL to itself during the argv[1]-th step (0: never); it prints the last
# step and how many times the fused kernel ran.
RUN = """
import json, os, signal, sys
import torch
from resnet.models import fused
from resnet.training import trainer
torch.set_num_threads(1)
kill_at, cfg = int(sys.argv[1]), json.loads(sys.argv[2])
real_step, calls = trainer.train_step, []
def step(*args, **kwargs):
    calls.append(1)
    if len(calls) == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)
    return real_step(*args, **kwargs)
trainer.train_step = step
real_apply, fused_calls = fused._BNReLU.apply, []
def apply(*args):
    fused_calls.append(1)
    return real_apply(*args)
fused._BNReLU.apply = apply
result = trainer.train(trainer.TrainConfig(**cfg))
print(json.dumps({"step": result.step, "fused_calls": len(fused_calls), "fused_built": fused.extension() is not None}))
"""


def run(out: Path, kill_at: int = 0, **changes) -> subprocess.CompletedProcess:
    cfg = json.dumps({**CONFIG, "out": str(out), **changes})
    return subprocess.run([sys.executable, "-c", RUN, str(kill_at), cfg], env=ENV, capture_output=True, text=True,
                          timeout=600)


def test_kill9_after_a_timed_checkpoint_then_resume_is_exact_in_the_campaign_configuration(tmp_path):
    whole = run(tmp_path / "whole")
    assert whole.returncode == 0, whole.stderr
    said = json.loads(whole.stdout.strip().splitlines()[-1])
    assert said["step"] == 30
    if said["fused_built"]:
        assert said["fused_calls"] > 0  # the fused kernel trained this net

    killed = run(tmp_path / "run", kill_at=25)  # timed checkpoints at steps 10 and 20; killed 5 steps after
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert Checkpoint.load(tmp_path / "run").state.step == 20
    resumed = run(tmp_path / "run", resume=True)
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(resumed.stdout.strip().splitlines()[-1])["step"] == 30

    a, b = load_file(str(tmp_path / "whole" / "last.safetensors")), load_file(str(tmp_path / "run" / "last.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
