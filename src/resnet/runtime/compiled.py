"""``torch.compile`` that never stops a run: a compile that fails falls back to eager with one warning."""

from __future__ import annotations

import warnings

import torch


class CompiledOrEager(torch.nn.Module):
    """``torch.compile(module)`` that, if compilation fails (no C++ compiler, an unsupported platform or operator),
    warns once and runs ``module`` eagerly from then on. Parameters and state dict are ``module``'s own."""

    def __init__(self, module: torch.nn.Module, *, inference: bool = False, mode: str | None = None):
        super().__init__()
        self.module = module
        options = {"freezing": True} if inference else None
        # mode None: inductor's default. "reduce-overhead" (CUDA graphs) replays each captured pass from static
        # buffers: an output is overwritten by the next replay, so a caller must not keep one across steps (the
        # trainer computes the loss and the error count from the logits in the same step, eagerly).
        self.compiled = torch.compile(module, options=options, mode=mode)
        self.failed: str | None = None

    def forward(self, *args, **kwargs):
        if self.failed is None:
            try:
                return self.compiled(*args, **kwargs)
            except Exception as e:  # noqa: BLE001 - any compiler failure; a real model error re-raises below
                first = str(e).strip().splitlines()[0] if str(e).strip() else ""
                self.failed = f"{type(e).__name__}: {first}"[:300]
                warnings.warn(f"torch.compile failed ({self.failed}); running eagerly (pass --no-compile to skip)",
                              RuntimeWarning, stacklevel=2)
        return self.module(*args, **kwargs)

    def state_dict(self, *args, **kwargs):
        return self.module.state_dict(*args, **kwargs)

    def load_state_dict(self, *args, **kwargs):
        return self.module.load_state_dict(*args, **kwargs)
