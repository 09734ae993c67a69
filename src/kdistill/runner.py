"""Kept for code written against the earlier layout: the classifier task's run is `kdistill.classic.recipe`."""

from kdistill.classic.recipe import run

__all__ = ["run"]
