"""Renamed modules: the same tensors under other names.

Missing and unexpected keys with identical shapes are paired by their longest common dotted
suffix when that pairing is unique both ways, then by order (the same shapes in the same order).
A group of pairs that swaps one whole subtree for another (``head.`` -> ``head.fc.``,
``encoder.`` -> ``backbone.``) is certain; other pairings are proposals. Ambiguities are reported,
never guessed. Pure functions.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from ..checkpoint.types import TensorMeta

__all__ = ["RenameMatch", "match_renames", "common_suffix"]


@dataclass(frozen=True)
class RenameMatch:
    """Pairs of (checkpoint key, target key).

    Attributes:
        certain: pairs that swap whole subtrees, grouped as ``(old_prefix, new_prefix) -> pairs``.
        proposed: pairs inferred from order or a one-word suffix (need the user's decision).
        ambiguous: target key -> the several checkpoint keys it could be.
    """

    certain: dict[tuple[str, str], list[tuple[str, str]]] = field(default_factory=dict)
    proposed: list[tuple[str, str]] = field(default_factory=list)
    ambiguous: dict[str, list[str]] = field(default_factory=dict)


def common_suffix(a: str, b: str) -> int:
    """How many trailing dotted components ``a`` and ``b`` share."""
    pa, pb = a.split("."), b.split(".")
    n = 0
    while n < min(len(pa), len(pb)) and pa[-1 - n] == pb[-1 - n]:
        n += 1
    return n


def _best(key: str, candidates: Sequence[str]) -> tuple[int, list[str]]:
    scores = [(common_suffix(key, c), c) for c in candidates]
    top = max((s for s, _ in scores), default=0)
    return top, [c for s, c in scores if s == top]


def _split(key: str, n_suffix: int) -> str:
    """The prefix of ``key`` before its last ``n_suffix`` components (with a trailing dot)."""
    parts = key.split(".")
    head = parts[: len(parts) - n_suffix]
    return ".".join(head) + "." if head else ""


def match_renames(missing: Sequence[str], unexpected: Sequence[str],
                  ckpt: Mapping[str, TensorMeta], target: Mapping[str, TensorMeta]
                  ) -> RenameMatch:
    """Pair ``unexpected`` checkpoint keys with ``missing`` target keys of the same shape."""
    by_shape: dict[tuple[int, ...], list[str]] = {}
    for u in unexpected:
        by_shape.setdefault(ckpt[u].shape, []).append(u)
    missing_by_shape: dict[tuple[int, ...], list[str]] = {}
    for m in missing:
        missing_by_shape.setdefault(target[m].shape, []).append(m)

    pairs: list[tuple[str, str]] = []
    ambiguous: dict[str, list[str]] = {}
    for m in missing:
        score, cands = _best(m, by_shape.get(target[m].shape, []))
        if score == 0:
            continue
        if len(cands) > 1:
            ambiguous[m] = cands
            continue
        back_score, back = _best(cands[0], missing_by_shape[target[m].shape])
        if back == [m]:
            pairs.append((cands[0], m))
    paired_u = {u for u, _ in pairs}
    paired_m = {m for _, m in pairs}
    rest_m = [m for m in missing if m not in paired_m]
    rest_u = [u for u in unexpected if u not in paired_u]
    by_order: list[tuple[str, str]] = []
    if rest_m and len(rest_m) == len(rest_u) and all(
        ckpt[u].shape == target[m].shape for u, m in zip(rest_u, rest_m, strict=True)
    ):
        by_order = list(zip(rest_u, rest_m, strict=True))
        for m in rest_m:
            ambiguous.pop(m, None)

    certain: dict[tuple[str, str], list[tuple[str, str]]] = {}
    proposed: list[tuple[str, str]] = list(by_order)
    groups: dict[tuple[str, str], list[tuple[str, str]]] = {}
    for u, m in pairs:
        n = common_suffix(u, m)
        groups.setdefault((_split(u, n), _split(m, n)), []).append((u, m))
    for (old, new), group in groups.items():
        olds = {u for u, _ in group}
        news = {m for _, m in group}
        whole = (
            old and new
            and all(k in olds for k in ckpt if k.startswith(old))
            and all(k in news for k in target if k.startswith(new))
        )
        if whole:
            certain[(old, new)] = group
        else:
            proposed.extend(group)
    return RenameMatch(certain, proposed, ambiguous)
