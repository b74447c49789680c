"""Deep Residual Learning for Image Recognition (He et al., 2015), as a package."""

__version__ = "0.2.0"

from .models import build_model, model_names  # noqa: E402

__all__ = ["build_model", "model_names", "__version__"]
