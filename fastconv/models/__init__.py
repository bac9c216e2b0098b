"""Backbones built from ``fastconv.nn`` layers (one file per family)."""

from .lenet import lenet5

__all__ = ["lenet5"]
