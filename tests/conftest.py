"""Shared set-up for the test suite."""

import pytest


@pytest.fixture(scope="session", autouse=True)
def fused_kernel_built():
    """Build the fused BN + ReLU kernel (resnet.models.fused) once, before any test: its first build takes about a
    minute, which must not land inside a test that times itself (a deadline, a signal after a few seconds). Its
    subprocesses then find it in torch's extension cache. Where it does not build, the fallback runs (warned)."""
    from resnet.models import fused

    fused.extension()
