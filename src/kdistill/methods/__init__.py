"""Distillation schemes by name: each file registers one in METHODS."""

from kdistill.methods import born_again, mutual, offline  # noqa: F401  (registration)
from kdistill.methods.base import METHODS, RunContext, TrainedModel

__all__ = ["METHODS", "RunContext", "TrainedModel"]
