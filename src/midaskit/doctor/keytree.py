"""State-dict keys as a module tree: roll-ups of whole subtrees, numeric ranges, counts.

``pretrained.model.blocks.12`` ... ``pretrained.model.blocks.23`` become one
:class:`Subtree` labelled ``pretrained.model.blocks.12-23`` ("12 blocks"). Pure functions on key
strings and :class:`~midaskit.checkpoint.types.TensorMeta`; no torch.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from ..checkpoint.types import TensorMeta

__all__ = [
    "Subtree",
    "split_key",
    "module_prefixes",
    "count_params",
    "format_count",
    "plural",
    "format_shape",
    "roll_up",
    "fold_names",
    "group_by_depth",
]


@dataclass(frozen=True)
class Subtree:
    """A group of keys shown as one line.

    Attributes:
        label: ``"pretrained.model.blocks.12-23"`` or a single key.
        keys: the keys in the group, in order.
        params: elements of the floating-point tensors in the group.
        units: ``"12 blocks"`` when the group folds numbered siblings, else ``""``.
    """

    label: str
    keys: tuple[str, ...]
    params: int
    units: str = ""


def split_key(key: str) -> tuple[str, str]:
    """``"a.b.weight"`` -> ``("a.b", "weight")``; a top-level key has module ``""``."""
    module, _, leaf = key.rpartition(".")
    return module, leaf


def module_prefixes(key: str) -> list[str]:
    """Every ancestor module of ``key``, outermost first (``"a.b.w"`` -> ``["a", "a.b"]``)."""
    parts = key.split(".")[:-1]
    return [".".join(parts[: i + 1]) for i in range(len(parts))]


def count_params(metas: Mapping[str, TensorMeta], keys: Iterable[str] | None = None) -> int:
    """Elements of the floating-point entries among ``keys`` (all when ``None``)."""
    selected = metas if keys is None else (k for k in keys if k in metas)
    return sum(metas[k].numel for k in selected if metas[k].is_floating)


def format_count(n: int) -> str:
    """``151_000_000`` -> ``"151M"``, ``1_234`` -> ``"1.2K"``, ``12`` -> ``"12"``."""
    for unit, size in (("B", 10**9), ("M", 10**6), ("K", 10**3)):
        if n >= size:
            value = n / size
            return f"{value:.1f}{unit}" if value < 10 else f"{value:.0f}{unit}"
    return str(n)


def plural(n: int, word: str) -> str:
    """``plural(1, "key")`` -> ``"1 key"``, ``plural(3, "key")`` -> ``"3 keys"``."""
    return f"{n} {word}{'' if n == 1 else 's'}"


def format_shape(shape: Sequence[int]) -> str:
    """``(16, 4, 3, 3)`` -> ``"(16, 4, 3, 3)"``; a scalar is ``"()"``."""
    return "(" + ", ".join(str(d) for d in shape) + ("," if len(shape) == 1 else "") + ")"


def _format_range(values: Iterable[int]) -> str:
    nums = sorted(set(values))
    runs: list[str] = []
    start = prev = nums[0]
    for n in [*nums[1:], None]:
        if n is not None and n == prev + 1:
            prev = n
            continue
        runs.append(str(start) if start == prev else f"{start}-{prev}")
        if n is not None:
            start = prev = n
    return ",".join(runs)


def _fold(nodes: list[tuple[str, list[str]]], metas: Mapping[str, TensorMeta]) -> list[Subtree]:
    """Fold nodes that differ only in numeric path components into one labelled range."""
    templates: dict[tuple[str, ...], list[tuple[list[str], list[str]]]] = {}
    for label, keys in nodes:
        parts = label.split(".")
        template = tuple("#" if p.isdigit() else p for p in parts)
        templates.setdefault(template, []).append((parts, keys))
    out = []
    for template, members in templates.items():
        keys = [k for _, ks in members for k in ks]
        if len(members) == 1:
            out.append(Subtree(".".join(members[0][0]), tuple(keys), count_params(metas, keys)))
            continue
        varying = [i for i, t in enumerate(template) if t == "#"
                   and len({parts[i] for parts, _ in members}) > 1]
        label_parts = list(members[0][0])
        for i in varying:
            rng = _format_range(int(parts[i]) for parts, _ in members)
            label_parts[i] = rng if (i == len(template) - 1 and len(varying) == 1) else f"{{{rng}}}"
        units = ""
        if len(varying) == 1:
            i = varying[0]
            parent = template[i - 1] if i > 0 and i == len(template) - 1 else ""
            noun = parent if parent.endswith("s") else "modules"  # blocks, layers, stages
            is_key = members[0][1] == [".".join(members[0][0])]
            units = f"{len(members)} {'keys' if is_key else noun}"
        out.append(Subtree(".".join(label_parts), tuple(keys), count_params(metas, keys), units))
    return out


def roll_up(selected: Iterable[str], universe: Mapping[str, TensorMeta]) -> list[Subtree]:
    """Group ``selected`` keys into the highest subtrees of ``universe`` that are entirely selected.

    Numbered siblings fold into ranges: if ``blocks.12`` ... ``blocks.23`` are wholly selected and
    ``blocks.0`` ... ``blocks.11`` are not, the result holds one ``blocks.12-23`` group. Keys of
    ``selected`` that are not in ``universe`` are returned one per group, after the others.
    """
    chosen = [k for k in universe if k in set(selected)]
    chosen_set = set(chosen)
    extra = [k for k in selected if k not in universe]
    # below[prefix] = every universe key under that module prefix
    below: dict[str, list[str]] = {}
    for key in universe:
        for prefix in module_prefixes(key):
            below.setdefault(prefix, []).append(key)
    full = {p: all(k in chosen_set for k in keys) for p, keys in below.items()}
    nodes: list[tuple[str, list[str]]] = []
    emitted: set[str] = set()
    for key in chosen:
        if key in emitted:
            continue
        top = next((p for p in module_prefixes(key) if full[p]), key)
        keys = below[top] if top != key else [key]
        emitted.update(keys)
        nodes.append((top, keys))
    folded = _fold(nodes, universe)
    return folded + [Subtree(k, (k,), 0) for k in extra]


def fold_names(names: Iterable[str]) -> list[str]:
    """Fold numbered module names: ``["l.0.bn", "l.1.bn", "fc"]`` -> ``["l.{0-1}.bn", "fc"]``."""
    return [s.label for s in _fold([(n, [n]) for n in names], {})]


def group_by_depth(metas: Mapping[str, TensorMeta], max_groups: int = 24) -> list[Subtree]:
    """Summarise all keys as module subtrees, at most ``max_groups`` of them.

    Starts from the top-level modules and splits the largest group into its children while the
    result fits; numbered siblings fold into one range (``blocks.0-23``) that is not split.
    """
    groups = _children("", list(metas), metas)
    while True:
        for i in sorted(range(len(groups)), key=lambda j: -len(groups[j].keys)):
            g = groups[i]
            if g.units or g.label in metas:
                continue
            children = _children(g.label, list(g.keys), metas)
            if all(c.label in metas for c in children):
                continue  # a module's own tensors: keep it as one line
            if len(groups) - 1 + len(children) <= max_groups:
                groups[i:i + 1] = children
                break
        else:
            return groups


def _children(label: str, keys: list[str], metas: Mapping[str, TensorMeta]) -> list[Subtree]:
    """The groups one level below ``label`` (``""``: the top level)."""
    depth = label.count(".") + 1 if label else 0
    nodes: dict[str, list[str]] = {}
    for key in keys:
        parts = key.split(".")
        child = ".".join(parts[: depth + 1]) if len(parts) > depth + 1 else key
        nodes.setdefault(child, []).append(key)
    return _fold(list(nodes.items()), metas)
