"""Shared set-up for the test suite."""

import pytest


@pytest.fixture(scope="session", autouse=True)
def fused_kernel_built():
    """Build the fused BN + ReLU kernel (resnet.models.fused) once, before any test: its first build takes about a
    minute, which must not land inside a test that times itself (a deadline, a signal after a few seconds). Its
    subprocesses then find it in torch's extension cache. Where it does not build, the fallback runs (warned)."""
    from resnet.models import fused

    fused.extension()


@pytest.fixture(autouse=True)
def torch_threads_restored():
    """A test may set torch's thread count (one thread for tiny work on a busy machine); the next test starts with the
    count it found."""
    import torch

    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)
