"""Data-parallel training under ``torchrun``: one process per device, ``gloo`` on CPUs and ``nccl`` on GPUs.

``torchrun`` sets RANK / WORLD_SIZE / LOCAL_RANK; without them the run is a single process and nothing here does
anything. Only rank 0 logs, plots and writes files.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def restarted(self) -> bool:
        """True when torchrun restarted this worker after a failure (``--max-restarts``)."""
        return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0


def init_distributed(device_type: str) -> Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    backend = "nccl" if device_type == "cuda" else "gloo"
    if device_type == "cuda":
        torch.cuda.set_device(local)
    if not dist.is_initialized():
        dist.init_process_group(backend, timeout=datetime.timedelta(minutes=30))
    return Dist(rank, world, local)


def broadcast_flag(d: Dist, flag: bool, device: torch.device) -> bool:
    """True on every rank if it is true on any (a stop request or a divergence seen by one rank stops all)."""
    if not d.enabled:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def broadcast_buffers(d: Dist, module: torch.nn.Module) -> None:
    """Rank 0's buffers (BN running statistics) on every rank. DistributedDataParallel broadcasts them at the start
    of each forward, so after the last step every rank holds its own; an evaluation shared between ranks must use
    the ones rank 0 saves."""
    if d.enabled:
        for b in module.buffers():
            dist.broadcast(b, src=0)


def shutdown(d: Dist) -> None:
    if d.enabled and dist.is_initialized():
        dist.destroy_process_group()


class CrossProcessBatchNorm2d(torch.nn.BatchNorm2d):
    """BatchNorm whose training statistics are those of the whole global batch, on any backend (``gloo`` on CPUs
    too; PyTorch's own SyncBatchNorm runs only on GPUs). Gradients flow through the differentiable all-reduce, so the
    result equals single-process BN over the global batch."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        all_reduce = _AllReduceSum.apply
        dims = (0, 2, 3)
        count = torch.tensor([x.numel() / x.shape[1]], dtype=x.dtype, device=x.device)
        n = all_reduce(count)
        mean = all_reduce(x.sum(dims)) / n
        centred = x - mean[None, :, None, None]
        var = all_reduce(centred.pow(2).sum(dims)) / n
        if self.track_running_stats:
            with torch.no_grad():
                m = self.momentum if self.momentum is not None else 0.1
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                self.running_var.mul_(1 - m).add_(var.detach() * (n / (n - 1)), alpha=m)
                self.num_batches_tracked += 1
        y = centred * torch.rsqrt(var + self.eps)[None, :, None, None]
        if self.affine:
            y = y * self.weight[None, :, None, None] + self.bias[None, :, None, None]
        return y


class _AllReduceSum(torch.autograd.Function):
    """The sum over processes, differentiable: each process's output is the same sum, so the gradient of the global
    loss with respect to one process's input is the sum of the output gradients of all processes. (What
    ``torch.distributed.nn.functional.all_reduce`` computes; that function is deprecated and warns on every call.)"""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        y = x.clone()
        dist.all_reduce(y)
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


def convert_sync_batchnorm(module: torch.nn.Module, device_type: str) -> torch.nn.Module:
    """Every BatchNorm2d of ``module`` computes statistics over the global batch (``--sync-bn``)."""
    if device_type == "cuda":
        return torch.nn.SyncBatchNorm.convert_sync_batchnorm(module)
    for name, child in module.named_children():
        if type(child) is torch.nn.BatchNorm2d:
            sync = CrossProcessBatchNorm2d(child.num_features, child.eps, child.momentum, child.affine,
                                           child.track_running_stats)
            if child.affine:  # the same Parameter objects, so an optimiser built before still updates them
                sync.weight, sync.bias = child.weight, child.bias
            if child.track_running_stats:
                sync.running_mean, sync.running_var = child.running_mean, child.running_var
                sync.num_batches_tracked = child.num_batches_tracked
            setattr(module, name, sync)
        else:
            convert_sync_batchnorm(child, device_type)
    return module
