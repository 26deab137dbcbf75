"""Reading checkpoints safely (no pickle code runs) and lazily (shapes without tensor bytes)."""

from .types import TensorMeta

__all__ = ["TensorMeta"]
