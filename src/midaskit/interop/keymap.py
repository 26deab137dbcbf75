"""Two-way key maps written as data: template rules, lazy tensor transforms, dropped keys.

A rule pairs an official-layout key template with one or more target templates, e.g.
``("scratch.refinenet{n}.out_conv.{p}", "neck.fusion_stage.layers.{4-n}.projection.{p}")``.
A placeholder is an integer variable (``{i}``), an affine expression of one (``{4-n}``,
``{n-1}``, ``{n+1}``) or the word variable ``{p}`` (one key segment such as ``weight``). Each
template compiles to a full-match regex, so the same row maps keys both ways.

Rules with several targets carry a named tensor transform (``split-qkv``). Values stay lazy:
a renamed key keeps the very object it had (no bytes are read), and a transformed key becomes
a :class:`ComputedTensor` that reads its sources only when materialised. No torch import here.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any

from ..checkpoint.types import TensorMeta
from ..doctor.fixes import meta_of
from ..errors import MidaskitError

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = [
    "ComputedTensor",
    "Dropped",
    "KeyMapError",
    "KeyRule",
    "TRANSFORMS",
    "apply_rules",
    "materialize",
    "meta_of",
]


class KeyMapError(MidaskitError):
    """Keys that no rule of the table maps, or a transform without all of its inputs."""


_PLACEHOLDER = re.compile(r"\{(?:(\d+)-)?([a-z]+)(?:([+-])(\d+))?\}")
_WORD_VARS = frozenset({"p"})  # word placeholders: one key segment; every other is an integer


@dataclass(frozen=True)
class _Slot:
    """One placeholder: ``value = c - x`` (``neg``) or ``value = x + c``."""

    var: str
    neg: bool
    c: int

    def solve(self, text: str) -> int | str:
        if self.var in _WORD_VARS:
            return text
        value = int(text)
        return self.c - value if self.neg else value - self.c

    def render(self, x: int | str) -> str:
        if self.var in _WORD_VARS:
            return str(x)
        return str(self.c - int(x) if self.neg else int(x) + self.c)


@dataclass(frozen=True)
class _Template:
    """A compiled key template: matches keys and renders them from variable values."""

    text: str

    @cached_property
    def _parts(self) -> tuple[re.Pattern[str], tuple[str | _Slot, ...]]:
        pieces: list[str | _Slot] = []
        regex, pos = [], 0
        for m in _PLACEHOLDER.finditer(self.text):
            literal = self.text[pos : m.start()]
            pieces.append(literal)
            regex.append(re.escape(literal))
            c_neg, var, sign, c_pos = m.groups()  # "{4-n}": ("4", "n"); "{k-1}": ("k", "-", "1")
            if c_neg is not None and sign is not None:
                raise ValueError(f"placeholder {m.group(0)!r} in {self.text!r}: one constant only")
            if c_neg is not None:
                slot = _Slot(var, neg=True, c=int(c_neg))
            else:
                slot = _Slot(var, neg=False, c=int(c_pos or 0) * (-1 if sign == "-" else 1))
            pieces.append(slot)
            regex.append(f"(?P<{var}>[A-Za-z_]+)" if var in _WORD_VARS else f"(?P<{var}>\\d+)")
            pos = m.end()
        pieces.append(self.text[pos:])
        regex.append(re.escape(self.text[pos:]))
        return re.compile("".join(regex)), tuple(pieces)

    def match(self, key: str) -> dict[str, int | str] | None:
        pattern, pieces = self._parts
        m = pattern.fullmatch(key)
        if m is None:
            return None
        slots = {p.var: p for p in pieces if isinstance(p, _Slot)}
        return {var: slots[var].solve(text) for var, text in m.groupdict().items()}

    def render(self, values: Mapping[str, int | str]) -> str:
        _, pieces = self._parts
        return "".join(p if isinstance(p, str) else p.render(values[p.var]) for p in pieces)


@dataclass(frozen=True)
class KeyRule:
    """One row of a key table.

    Attributes:
        official: template of the official-layout key.
        target: template(s) of the other layout's key(s); several for a split tensor.
        transform: ``"rename"`` or a name in :data:`TRANSFORMS`.
    """

    official: str
    target: str | tuple[str, ...]
    transform: str = "rename"

    @property
    def targets(self) -> tuple[str, ...]:
        return (self.target,) if isinstance(self.target, str) else self.target

    @cached_property
    def _official(self) -> _Template:
        return _Template(self.official)

    @cached_property
    def _targets(self) -> tuple[_Template, ...]:
        return tuple(_Template(t) for t in self.targets)


@dataclass(frozen=True)
class Dropped:
    """Keys of one layout that the other layout has no place for.

    Attributes:
        pattern: regex (full match) on the key.
        reason: why the key is dropped, for reports.
        refill: how the reverse conversion recreates it: ``"derived"`` (computed from the
            architecture by the loader), ``"zeros"``, ``"ones"`` (neutral values of an unused
            module; shape from the official layout), or ``"none"`` (never recreated).
    """

    pattern: str
    reason: str
    refill: str = "none"

    def matches(self, key: str) -> bool:
        return re.fullmatch(self.pattern, key) is not None


# ---- lazy values ------------------------------------------------------------------------------

def materialize(value: Any) -> torch.Tensor:
    """The tensor behind a lazy value (a ``torch.Tensor`` is returned as is)."""
    fn = getattr(value, "materialize", None)
    return fn() if callable(fn) else value


class ComputedTensor:
    """A tensor computed from other (lazy) values when first materialised.

    Attributes:
        shape, dtype: of the result, known without reading any bytes.
        sources: the input values.
    """

    __slots__ = ("shape", "dtype", "sources", "_fn")

    def __init__(self, shape: tuple[int, ...], dtype: str, sources: Sequence[Any],
                 fn: Callable[..., torch.Tensor]) -> None:
        self.shape = tuple(shape)
        self.dtype = dtype
        self.sources = tuple(sources)
        self._fn = fn

    @property
    def meta(self) -> TensorMeta:
        return TensorMeta(self.shape, self.dtype)

    def materialize(self) -> torch.Tensor:
        return self._fn(*(materialize(s) for s in self.sources))

    def __repr__(self) -> str:
        return f"ComputedTensor(shape={self.shape}, dtype={self.dtype})"


def _split(value: Any, parts: int) -> list[ComputedTensor]:
    """``(parts * d, ...) -> parts x (d, ...)``: the fused q/k/v rows, in that order."""
    meta = meta_of(value)
    rows = meta.shape[0] // parts
    if rows * parts != meta.shape[0]:
        raise KeyMapError(f"cannot split a {list(meta.shape)} tensor into {parts} equal parts")
    shape = (rows, *meta.shape[1:])
    return [ComputedTensor(shape, meta.dtype, (value,),
                           lambda t, i=i: t[i * rows : (i + 1) * rows])
            for i in range(parts)]


def _fuse(values: Sequence[Any]) -> ComputedTensor:
    """``parts x (d, ...) -> (parts * d, ...)``: q/k/v re-fused along the output rows."""
    metas = [meta_of(v) for v in values]
    if len({m.shape for m in metas}) != 1 or len({m.dtype for m in metas}) != 1:
        raise KeyMapError(f"cannot fuse tensors of shapes {[list(m.shape) for m in metas]}")
    shape = (metas[0].shape[0] * len(values), *metas[0].shape[1:])

    def cat(*tensors: torch.Tensor) -> torch.Tensor:
        import torch

        return torch.cat(tensors, dim=0)

    return ComputedTensor(shape, metas[0].dtype, values, cat)


# name -> (official value -> target values, target values -> official value)
TRANSFORMS: dict[str, tuple[Callable[[Any], list[Any]], Callable[[Sequence[Any]], Any]]] = {
    "rename": (lambda v: [v], lambda vs: vs[0]),
    "split-qkv": (lambda v: _split(v, 3), _fuse),  # fused attn.qkv -> query, key, value
}


# ---- applying a table -------------------------------------------------------------------------

def apply_rules(
    tensors: Mapping[str, Any],
    rules: Iterable[KeyRule],
    dropped: Iterable[Dropped],
    *,
    reverse: bool = False,
) -> tuple[dict[str, Any], list[str]]:
    """Map ``tensors`` through ``rules`` (official -> target, or back with ``reverse``).

    Returns:
        ``(mapped values in input order, dropped keys)``.

    Raises:
        KeyMapError: keys that neither a rule nor ``dropped`` accounts for, or a reverse
            transform missing some of its inputs.
    """
    rules, dropped = list(rules), list(dropped)
    out: dict[str, Any] = {}
    dropped_keys: list[str] = []
    unmapped: list[str] = []
    pending: dict[tuple[int, str], dict[int, Any]] = {}  # reverse multi-input groups
    for key, value in tensors.items():
        hit = _find(key, rules, reverse)
        if hit is None:
            (dropped_keys if any(d.matches(key) for d in dropped) else unmapped).append(key)
            continue
        idx, rule, values, slot = hit
        forward_fn, backward_fn = TRANSFORMS[rule.transform]
        if not reverse:
            for template, result in zip(rule._targets, forward_fn(value), strict=True):
                out[template.render(values)] = result
        elif len(rule.targets) == 1:
            out[rule._official.render(values)] = backward_fn([value])
        else:
            official = rule._official.render(values)
            group = pending.setdefault((idx, official), {})
            group[slot] = value
            if len(group) == len(rule.targets):
                out[official] = backward_fn([group[i] for i in range(len(rule.targets))])
    incomplete = [f"{k} (needs {len(rules[i].targets)} inputs, found {len(g)})"
                  for (i, k), g in pending.items() if len(g) != len(rules[i].targets)]
    if unmapped or incomplete:
        shown = ", ".join((unmapped + incomplete)[:8])
        more = len(unmapped) + len(incomplete) - 8
        raise KeyMapError(f"{len(unmapped) + len(incomplete)} keys cannot be mapped: {shown}"
                          + (f" and {more} more" if more > 0 else ""))
    return out, dropped_keys


def _find(key: str, rules: list[KeyRule], reverse: bool,
          ) -> tuple[int, KeyRule, dict[str, int | str], int] | None:
    for idx, rule in enumerate(rules):
        templates = rule._targets if reverse else (rule._official,)
        for slot, template in enumerate(templates):
            values = template.match(key)
            if values is not None:
                return idx, rule, values, slot
    return None
