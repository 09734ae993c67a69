"""A small model zoo by name, for the built-in recipes; any nn.Module works with the engine."""

from kdistill.models.zoo import MODELS, build_model

__all__ = ["MODELS", "build_model"]
