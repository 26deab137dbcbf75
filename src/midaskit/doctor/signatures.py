"""Layer types inferred from what a module stores: its parameter and buffer names and ranks.

BatchNorm stores ``weight, bias, running_mean, running_var, num_batches_tracked``; GroupNorm and
LayerNorm store ``weight, bias``; an InstanceNorm stores running statistics only when built with
``track_running_stats=True``; a conv weight has rank 3-5, a linear weight rank 2. Pure functions.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from ..checkpoint.types import TensorMeta
from .keytree import split_key

__all__ = ["LayerKind", "Signature", "module_signatures", "infer_kind", "describe_layer"]

RUNNING_STATS = ("running_mean", "running_var", "num_batches_tracked")


class LayerKind:
    """Layer kinds told apart by their stored entries."""

    BATCHNORM = "batchnorm"  # affine weights and running statistics
    STATS_NORM = "stats-norm"  # running statistics, no affine weights
    NORM = "norm"  # affine weights only: GroupNorm, LayerNorm, affine InstanceNorm
    CONV = "conv"
    LINEAR = "linear"
    OTHER = "other"

    NORMS = (BATCHNORM, STATS_NORM, NORM)


@dataclass(frozen=True)
class Signature:
    """What one module stores directly (not its children).

    Attributes:
        leaves: leaf name -> meta (``{"weight": ..., "bias": ...}``).
        kind: a :class:`LayerKind`.
    """

    leaves: Mapping[str, TensorMeta]
    kind: str


def infer_kind(leaves: Mapping[str, TensorMeta]) -> str:
    """The :class:`LayerKind` of a module storing ``leaves``."""
    names = set(leaves)
    has_stats = {"running_mean", "running_var"} <= names
    weight = leaves.get("weight")
    if has_stats:
        return LayerKind.BATCHNORM if weight is not None else LayerKind.STATS_NORM
    if weight is None or not names <= {"weight", "bias"}:
        return LayerKind.OTHER
    rank = len(weight.shape)
    if rank == 1:
        return LayerKind.NORM
    if rank == 2:
        return LayerKind.LINEAR
    return LayerKind.CONV if rank in (3, 4, 5) else LayerKind.OTHER


def module_signatures(metas: Mapping[str, TensorMeta]) -> dict[str, Signature]:
    """Module prefix -> :class:`Signature` for every module that stores something directly."""
    leaves: dict[str, dict[str, TensorMeta]] = {}
    for key, meta in metas.items():
        module, leaf = split_key(key)
        leaves.setdefault(module, {})[leaf] = meta
    return {m: Signature(lv, infer_kind(lv)) for m, lv in leaves.items()}


_KIND_LABELS = {
    LayerKind.BATCHNORM: "a BatchNorm",
    LayerKind.STATS_NORM: "a norm layer with running statistics and no affine weights",
    LayerKind.NORM: "a GroupNorm-like layer (GroupNorm, LayerNorm)",
    LayerKind.LINEAR: "a Linear",
    LayerKind.OTHER: "another kind of layer",
}


def describe_layer(sig: Signature, type_name: str | None = None, other_type: str = "") -> str:
    """Plain words for a layer: its class when known, else what its signature suggests.

    ``other_type`` is the class on the other side; an InstanceNorm there turns "a BatchNorm" into
    "an InstanceNorm with running statistics" (their entries are identical).
    """
    has_stats = sig.kind in (LayerKind.BATCHNORM, LayerKind.STATS_NORM)
    if type_name:
        if "InstanceNorm" in type_name or "BatchNorm" in type_name:
            article = "an" if type_name.startswith("Instance") else "a"
            return f"{article} {type_name} {'with' if has_stats else 'without'} running statistics"
        article = "an" if type_name[:1].lower() in "aeiou" else "a"
        return f"{article} {type_name}"
    if has_stats and "InstanceNorm" in other_type:
        return "an InstanceNorm with running statistics"
    if sig.kind == LayerKind.CONV:
        rank = len(sig.leaves["weight"].shape)
        kernel = "x".join(str(d) for d in sig.leaves["weight"].shape[2:])
        return f"a Conv{rank - 2}d ({kernel})"
    return _KIND_LABELS[sig.kind]
