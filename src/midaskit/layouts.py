"""The official checkpoint layout of each variant as data (no torch, no model build).

``layouts.json.gz`` is generated from the reference manifests by ``scripts/make_layouts.py``; the
tests check it equals both the manifests and our models' ``state_dict()`` on ``meta``.
"""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

from .checkpoint.types import TensorMeta
from .variants import get_variant

__all__ = ["Layout", "load_layout", "UNUSED_KEY_PATTERNS"]

# keys the official files hold that the depth forward never reads; they must still load (strict)
UNUSED_KEY_PATTERNS: tuple[str, ...] = (
    "pretrained.model.head.",  # ImageNet classifier of the backbone
    "pretrained.model.head_dist.",  # LeViT's distillation classifier
    "pretrained.model.fc_norm.",  # BEiT's pooled-feature norm, only before the classifier
    "pretrained.model.proj_head.",  # Next-ViT's classifier projection
    "scratch.refinenet4.resConfUnit1.",  # the deepest fusion block gets no skip input
)


@dataclass(frozen=True)
class Layout:
    """One variant's official state-dict layout.

    Attributes:
        variant: the variant name.
        metas: key -> shape/dtype in the official state-dict order.
        buffers: keys that are buffers, not parameters.
        derived: buffers computed from the architecture (indices, masks, counters).
    """

    variant: str
    metas: dict[str, TensorMeta]
    buffers: frozenset[str]
    derived: frozenset[str]

    @property
    def num_params(self) -> int:
        return sum(m.numel for k, m in self.metas.items() if k not in self.buffers)

    def unused_keys(self) -> list[str]:
        """Keys present in the files that the depth forward never uses."""
        return [k for k in self.metas if k.startswith(UNUSED_KEY_PATTERNS)]


@lru_cache(maxsize=1)
def _all_layouts() -> dict[str, list]:
    raw = resources.files("midaskit").joinpath("data/layouts.json.gz").read_bytes()
    return json.loads(gzip.decompress(raw))


@lru_cache(maxsize=None)
def load_layout(variant: str) -> Layout:
    """The official layout of ``variant`` (any name :func:`get_variant` accepts)."""
    name = get_variant(variant).name
    rows = _all_layouts()[name]
    return Layout(
        variant=name,
        metas={key: TensorMeta(tuple(shape), dtype) for key, shape, dtype, _, _ in rows},
        buffers=frozenset(row[0] for row in rows if row[3]),
        derived=frozenset(row[0] for row in rows if row[4]),
    )
