"""Known layout drifts between the official MiDaS files (timm 0.6.12) and files re-saved from
newer timm, as data: how to recognise each, and the key renames that undo it losslessly.

FIELD-NOTES sections 1 and 2. Buffers that newer timm no longer saves (BEiT and Swin
``relative_position_index``, Swin ``attn_mask``) need no rename: the loader regenerates them,
and checks a present copy against the regenerated value.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

__all__ = ["Drift", "DRIFTS", "detect_drifts", "undo_drift_key"]


@dataclass(frozen=True)
class Drift:
    """One known layout change.

    Attributes:
        name: short identifier used in logs and findings.
        description: what changed, in plain words.
        marker: a regex; a key matching it proves the checkpoint has the new layout.
        renames: ``(pattern, replacement)`` pairs for ``re.sub`` (a string or a function of the
            match); the first pattern that matches a key gives its official name.
    """

    name: str
    description: str
    marker: str
    renames: tuple[tuple[str, str | Callable[[re.Match[str]], str]], ...]


def _shift_stage(match: re.Match[str]) -> str:
    # timm >= 0.9 merges patches at the start of stage i+1; the official files at the end of stage i
    return f"{match.group(1)}layers.{int(match.group(2)) - 1}.downsample."


DRIFTS: tuple[Drift, ...] = (
    Drift(
        name="swin-timm09-layout",
        description=(
            "Swin/SwinV2 saved by timm >= 0.9: patch merging moved to the start of the next "
            "stage (layers.N.downsample -> layers.N-1.downsample) and the classifier renamed "
            "head -> head.fc"
        ),
        marker=r"(^|\.)pretrained\.model\.(layers\.3\.downsample\.|head\.fc\.)",
        renames=(
            (r"^(.*pretrained\.model\.)layers\.([123])\.downsample\.",
             _shift_stage),
            (r"^(.*pretrained\.model\.)head\.fc\.", "\\g<1>head."),
        ),
    ),
)


def detect_drifts(keys: Iterable[str]) -> list[Drift]:
    """The drifts whose marker some key matches."""
    keys = list(keys)
    return [d for d in DRIFTS if any(re.search(d.marker, k) for k in keys)]


def undo_drift_key(key: str, drift: Drift) -> str:
    """The official key for ``key`` under ``drift`` (unchanged when no rule applies)."""
    for pattern, replacement in drift.renames:
        new, count = re.subn(pattern, replacement, key, count=1)
        if count:
            return new
    return key
