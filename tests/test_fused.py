"""The fused BN + (shortcut addition) + ReLU kernel (resnet.models.fused): the same function as PyTorch's separate ops,
forward and backward, in float64; running statistics updated alike; PyTorch's ops wherever it does not apply."""

import copy
import shutil
import warnings

import pytest
import torch
import torch.nn.functional as F

from resnet.models import build_model, fused
from resnet.models.fold import fold_batchnorm


def channels_last(*shape, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g, dtype=torch.float64) * 2 + 0.5).to(dtype).contiguous(
        memory_format=torch.channels_last)


def reference(bn, x, shortcut):
    """PyTorch's own ops: BN in training mode, the addition, the ReLU."""
    out = F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, True, bn.momentum, bn.eps)
    return F.relu(out + shortcut if shortcut is not None else out)


def test_the_kernel_builds_where_there_is_a_compiler():
    if shutil.which("c++") is None:
        pytest.skip("no C++ compiler on this machine: the fallback runs (tested below)")
    assert fused.extension() is not None


@pytest.mark.parametrize("with_shortcut", [False, True])
@pytest.mark.parametrize("channels", [5, 16])
def test_matches_pytorch_in_float64_forward_and_backward(with_shortcut, channels):
    bn = torch.nn.BatchNorm2d(channels).double()
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.5, 0.5)
    twin = copy.deepcopy(bn)
    x = channels_last(3, channels, 5, 7).requires_grad_()
    s = channels_last(3, channels, 5, 7, seed=1).requires_grad_() if with_shortcut else None
    x2 = x.detach().clone().requires_grad_()
    s2 = s.detach().clone().requires_grad_() if with_shortcut else None
    assert fused.fusable(bn, x, s)

    y = fused.bn_relu(bn, x, s)
    y_ref = reference(twin, x2, s2)
    torch.testing.assert_close(y, y_ref, rtol=1e-12, atol=1e-12)
    assert y.is_contiguous(memory_format=torch.channels_last)
    assert 0 < (y > 0).double().mean() < 1  # the ReLU's mask matters for the gradients below

    grad = channels_last(3, channels, 5, 7, seed=2)
    y.backward(grad)
    y_ref.backward(grad)
    torch.testing.assert_close(x.grad, x2.grad, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(bn.weight.grad, twin.weight.grad, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(bn.bias.grad, twin.bias.grad, rtol=1e-10, atol=1e-12)
    if with_shortcut:
        torch.testing.assert_close(s.grad, s2.grad, rtol=1e-12, atol=0)
    # the running statistics and the batch count move as nn.BatchNorm2d moves them (F.batch_norm leaves the count)
    twin.num_batches_tracked.add_(1)
    for a, b in zip(bn.buffers(), twin.buffers()):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_gradcheck_in_float64():
    bn = torch.nn.BatchNorm2d(3).double()
    x = channels_last(2, 3, 3, 3).requires_grad_()
    s = channels_last(2, 3, 3, 3, seed=1).requires_grad_()
    w = bn.weight.detach().clone().requires_grad_()
    b = bn.bias.detach().clone().requires_grad_()

    def f(x, s, w, b):
        return fused._BNReLU.apply(x, w, b, s, torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64),
                                   0.1, 1e-5)

    assert torch.autograd.gradcheck(f, (x, s, w, b))


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
def test_lower_precisions_are_within_their_rounding(dtype, tol):
    """fp32, and bf16 activations with fp32 parameters (what autocast gives): against PyTorch in float64."""
    bn = torch.nn.BatchNorm2d(16)
    x64 = channels_last(4, 16, 6, 6)
    s64 = channels_last(4, 16, 6, 6, seed=1)
    y = fused.bn_relu(bn, x64.to(dtype), s64.to(dtype))
    assert y.dtype == dtype
    y_ref = reference(copy.deepcopy(bn).double(), x64, s64)
    scale = y_ref.abs().max().item()
    assert (y.double() - y_ref).abs().max().item() <= tol * scale * 2


def test_a_resnet_trains_alike_fused_and_unfused(monkeypatch):
    """One training step of a CIFAR ResNet (option A: shortcuts padded and subsampled) and a bottleneck ResNet, in
    float64 and channels_last: the same loss, gradients and BN statistics with and without the kernel."""
    for name, size in [("resnet20", 8), ("resnet50", 64)]:  # 64: BN over 2 x 1 x 1 values amplifies rounding
        torch.manual_seed(0)
        model = build_model(name).double().to(memory_format=torch.channels_last).train()
        x = channels_last(2, 3, size, size)
        results = []
        for on in ("1", "0"):
            monkeypatch.setenv("RESNET_FUSED_BN", on)
            m = copy.deepcopy(model)
            assert fused.fusable(m.bn1, channels_last(2, m.bn1.num_features, 4, 4)) == (on == "1")
            out = m(x)
            out.square().sum().backward()
            results.append((out, [p.grad for p in m.parameters()], list(m.buffers())))
        (out_f, grads_f, bufs_f), (out_u, grads_u, bufs_u) = results
        torch.testing.assert_close(out_f, out_u, rtol=1e-9, atol=1e-12)
        for a, b in zip(grads_f + bufs_f, grads_u + bufs_u):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-9)  # a bug is off by O(1)


def test_pytorchs_ops_run_wherever_the_kernel_does_not_apply():
    bn = torch.nn.BatchNorm2d(4)
    x = channels_last(2, 4, 3, 3, dtype=torch.float32)
    assert fused.fusable(bn, x)
    assert not fused.fusable(bn, x.contiguous())  # NCHW
    assert not fused.fusable(bn, x.half())  # a dtype the kernel does not take
    assert not fused.fusable(bn, x, torch.zeros(2, 4, 3, 1))  # a shortcut of another shape
    assert not fused.fusable(bn.eval(), x)  # evaluation (BN is folded there)
    bn.train()
    handle = bn.register_forward_hook(lambda *a: None)  # a hook must see the BN module run
    assert not fused.fusable(bn, x)
    handle.remove()
    assert not fused.fusable(torch.nn.SyncBatchNorm(4), x)
    assert not fused.fusable(torch.nn.BatchNorm2d(4).bfloat16(), x.bfloat16())  # statistics kept in bf16


def test_a_kernel_that_does_not_build_warns_and_falls_back(monkeypatch):
    import torch.utils.cpp_extension as cpp

    def failing_build(**kwargs):
        raise RuntimeError("Error building extension 'resnet_bn_relu': [1/2] c++ -MMD bn_relu.cpp -o bn_relu.o\n"
                           "bn_relu.cpp:3:10: fatal error: torch/extension.h: No such file or directory")

    monkeypatch.setattr(cpp, "load", failing_build)
    with pytest.warns(RuntimeWarning, match="did not build .*fatal error: torch/extension.h"):
        assert fused.extension.__wrapped__() is None
    monkeypatch.setattr(fused, "extension", lambda: None)
    bn = torch.nn.BatchNorm2d(4)
    x = channels_last(2, 4, 3, 3, dtype=torch.float32)
    assert not fused.fusable(bn, x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        torch.testing.assert_close(fused.bn_relu(bn, x), reference(copy.deepcopy(torch.nn.BatchNorm2d(4)), x, None))


def test_bn_folding_still_sees_every_bn():
    """Inference folds BN into the convolutions by tracing the model (torch.fx): the blocks' fused call must leave
    every BN visible to the tracer, so that none is left in the folded model."""
    model = build_model("resnet20")
    folded = fold_batchnorm(model)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(folded(x), model.eval()(x), rtol=1e-4, atol=1e-4)


def test_a_stale_build_lock_is_removed_and_a_live_one_kept(monkeypatch, tmp_path):
    """A build killed half-way leaves torch's lock file, on which every later build would wait for ever."""
    import os
    import time
    import torch.utils.cpp_extension as cpp

    monkeypatch.setattr(cpp, "load", lambda **kwargs: "built")
    monkeypatch.setenv("RESNET_CACHE", str(tmp_path))  # builds go under the package's cache root
    fused.extension.__wrapped__()
    (build,) = (tmp_path / "torch_extensions").glob("*/*")  # one directory, named for the CPU capability and source
    assert build.name.startswith(f"resnet_bn_relu_{torch.backends.cpu.get_cpu_capability().lower()}_")
    lock = build / "lock"
    lock.touch()
    assert fused.extension.__wrapped__() == "built" and lock.exists()  # a build under way elsewhere
    old = time.time() - 3600
    os.utime(lock, (old, old))
    assert fused.extension.__wrapped__() == "built" and not lock.exists()


def test_a_nan_stays_nan_as_in_pytorch():
    """A non-finite input must reach the loss (the trainer stops on it), as through PyTorch's ReLU."""
    bn = torch.nn.BatchNorm2d(4)
    x = channels_last(2, 4, 3, 3, dtype=torch.float32)
    x[0, 1, 1, 1] = float("nan")
    y = fused.bn_relu(bn, x)
    y_ref = reference(copy.deepcopy(torch.nn.BatchNorm2d(4)), x, None)
    assert torch.isnan(y_ref[:, 1]).all() and torch.isnan(y[:, 1]).all()
    torch.testing.assert_close(y[:, [0, 2, 3]], y_ref[:, [0, 2, 3]])


def test_off_turns_the_kernel_off_inside_its_block_only(monkeypatch):
    """``fused.off()`` is scoped: nested blocks and a block left by an exception each restore what was before."""
    monkeypatch.setenv("RESNET_FUSED_BN", "1")
    with fused.off():
        assert not fused.enabled()
        with fused.off():
            assert not fused.enabled()
        assert not fused.enabled()
    assert fused.enabled()
    with pytest.raises(ValueError), fused.off():
        raise ValueError("the block ends early")
    assert fused.enabled()
    monkeypatch.setenv("RESNET_FUSED_BN", "0")
    assert not fused.enabled()
