"""Build the layouts that newer timm saves, from the official ones, for drift tests.

The transformation is the inverse of ``midaskit.drift`` plus the buffers newer timm no longer
saves; tests check it against the reference drift reports (``timm_drift/timm1_*.json``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TypeVar

T = TypeVar("T")

_DOWNSAMPLE = re.compile(r"^(.*pretrained\.model\.)layers\.([012])\.downsample\.")
_HEAD = re.compile(r"^(.*pretrained\.model\.)head\.")
_NOT_SAVED_BY_NEW_TIMM = re.compile(r"(\.relative_position_index|\.attn_mask)$")


def to_new_timm_layout(state: Mapping[str, T], family: str) -> dict[str, T]:
    """The state dict a timm >= 0.9 model of ``family`` ("beit", "swin", "swin2") would save."""
    out: dict[str, T] = {}
    for key, value in state.items():
        if _NOT_SAVED_BY_NEW_TIMM.search(key):
            continue
        if family in ("swin", "swin2"):
            key = _DOWNSAMPLE.sub(lambda m: f"{m.group(1)}layers.{int(m.group(2)) + 1}.downsample.",
                                  key)
            key = _HEAD.sub(lambda m: f"{m.group(1)}head.fc.", key)
        out[key] = value
    return out
