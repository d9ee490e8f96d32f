"""Circuit-discovery methods, one registry, one signature: ``method(problem, **params) -> EdgeScores``."""

from . import acdc, attribution, canonical, hisp, sp  # noqa: F401  (registers the methods)
from .base import METHODS, Problem, get_method, register

__all__ = ["METHODS", "Problem", "get_method", "register"]
