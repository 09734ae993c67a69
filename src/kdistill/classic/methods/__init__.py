"""Distillation schemes by name: each file registers one in METHODS."""

from kdistill.classic.methods import born_again, mutual, none, offline  # noqa: F401  (registration)
from kdistill.classic.methods.base import METHODS, RunContext, TrainedModel

__all__ = ["METHODS", "RunContext", "TrainedModel"]
