"""Fixes as data: frozen dataclasses that turn a state dict into a new one and say what changed.

Every fix has ``apply(state) -> (new_state, FixRecord)``. ``state`` maps keys to
:class:`~midaskit.checkpoint.types.TensorMeta` (the doctor plans on shapes alone),
``LazyTensor`` or ``torch.Tensor``. Key-only fixes (prefixes, renames, drops) reuse the value
objects, so no tensor bytes are read or copied; value fixes materialise only the keys they change.
A fix is ``safe`` when it is lossless and certain; the others apply only when the user allows
them by their ``allow`` name (``midaskit doctor --allow adapt-input-channels``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any, ClassVar

from ..checkpoint.types import TensorMeta
from ..errors import IncompatibleCheckpointError
from .keytree import format_shape, plural

__all__ = [
    "Fix",
    "FixRecord",
    "Unwrap",
    "StripPrefix",
    "AddPrefix",
    "Rename",
    "RenameRegex",
    "UndoDrift",
    "DropKeys",
    "FillDerived",
    "FillUnused",
    "Reshape",
    "AdaptInputChannels",
    "CastDtype",
    "ADAPT_MODES",
    "meta_of",
]

State = Mapping[str, Any]
ADAPT_MODES = ("drop-extra", "mean", "zero-pad")
NUM_BATCHES_TRACKED = "num_batches_tracked"


@dataclass(frozen=True)
class FixRecord:
    """What one applied fix changed, and why.

    Attributes:
        fix: the fix's class name.
        summary: one line, e.g. ``"stripped 'module.' from 412 keys"``.
        reason: why the fix was needed.
        safe: whether the fix is lossless.
        keys: the keys it changed (new names for renames).
    """

    fix: str
    summary: str
    reason: str
    safe: bool
    keys: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "keys": list(self.keys)}


def meta_of(value: Any) -> TensorMeta:
    """The :class:`TensorMeta` of a meta, ``LazyTensor`` or ``torch.Tensor``."""
    if isinstance(value, TensorMeta):
        return value
    meta = getattr(value, "meta", None)
    if isinstance(meta, TensorMeta):
        return meta
    return TensorMeta(tuple(int(d) for d in value.shape), str(value.dtype).removeprefix("torch."))


def _tensor(value: Any):
    """A ``torch.Tensor`` for a ``LazyTensor`` (read now) or a tensor (as is)."""
    materialize = getattr(value, "materialize", None)
    return materialize() if callable(materialize) else value


def _torch_dtype(name: str):
    import torch

    return getattr(torch, name)


class Fix:
    """Base of the fix dataclasses (each subclass is a frozen dataclass)."""

    allow: ClassVar[str] = ""  # the --allow name that permits an unsafe fix of this kind
    safe: bool = True

    def apply(self, state: State) -> tuple[dict[str, Any], FixRecord]:  # pragma: no cover
        raise NotImplementedError

    def describe(self) -> str:  # pragma: no cover
        """What the fix does, one line."""
        raise NotImplementedError

    @property
    def allow_name(self) -> str | None:
        """The ``--allow`` name this fix needs, ``None`` for a safe fix."""
        return None if self.safe else getattr(self, "allow_as", "") or self.allow

    def params(self) -> dict[str, Any]:
        """The fix's data fields, JSON-ready (callables left out)."""
        out = {}
        for f in fields(self):  # type: ignore[arg-type]
            if f.name in ("safe", "reason", "allow_as") or not f.compare:
                continue
            value = getattr(self, f.name)
            if isinstance(value, tuple) and value and isinstance(value[0], tuple):
                value = {k: _jsonable(v) for k, v in value}
            out[f.name] = _jsonable(value)
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "fix": type(self).__name__,
            "safe": self.safe,
            "allow": self.allow_name,
            "description": self.describe(),
            "reason": getattr(self, "reason", ""),
            "params": self.params(),
        }

    def _record(self, summary: str, keys: list[str] | tuple[str, ...]) -> FixRecord:
        return FixRecord(type(self).__name__, summary, getattr(self, "reason", ""), self.safe,
                         tuple(keys))


def _jsonable(value: Any) -> Any:
    if isinstance(value, TensorMeta):
        return {"shape": list(value.shape), "dtype": value.dtype}
    if isinstance(value, tuple):
        return [_jsonable(v) for v in value]
    return value


def _pairs(mapping: Mapping[str, Any] | tuple) -> tuple:
    return tuple(mapping.items()) if isinstance(mapping, Mapping) else tuple(mapping)


def _rename_keys(state: State, new_name: Callable[[str], str]) -> tuple[dict[str, Any], list[str]]:
    """Rename every key through ``new_name`` (values untouched); refuse collisions."""
    out: dict[str, Any] = {}
    changed = []
    for key, value in state.items():
        new = new_name(key)
        if new in out:
            raise IncompatibleCheckpointError(
                f"renaming {key!r} to {new!r} collides with another key; the fix does not fit "
                "this checkpoint"
            )
        out[new] = value
        if new != key:
            changed.append(new)
    return out, changed


@dataclass(frozen=True)
class Unwrap(Fix):
    """Take the state dict out of its container (``{'model': ..., 'optimizer': ...}``)."""

    path: tuple[str, ...]
    reason: str = "the weights sit inside a container"

    def describe(self) -> str:
        return f"take the state dict from {_path_label(self.path)}"

    def apply(self, state: Any) -> tuple[dict[str, Any], FixRecord]:
        node = state
        for step in self.path:
            node = node[int(step)] if isinstance(node, (list, tuple)) else node[step]
        tensors = {k: v for k, v in node.items() if _is_tensor_like(v)}
        left = [str(k) for k in node if k not in tensors]
        summary = f"took {len(tensors)} tensors from {_path_label(self.path)}"
        if left:
            summary += f", left out {len(left)} non-tensor entries ({', '.join(left[:3])})"
        return tensors, self._record(summary, ())


def _path_label(path: tuple[str, ...]) -> str:
    return "the top level" if not path else "".join(f"[{p!r}]" for p in path)


def _is_tensor_like(value: Any) -> bool:
    return isinstance(value, TensorMeta) or (hasattr(value, "shape") and hasattr(value, "dtype"))


@dataclass(frozen=True)
class StripPrefix(Fix):
    """Remove ``prefix`` from every key that starts with it (``module.``, ``_orig_mod.``)."""

    prefix: str
    reason: str = ""

    def describe(self) -> str:
        return f"strip {self.prefix!r} from the keys"

    def apply(self, state: State) -> tuple[dict[str, Any], FixRecord]:
        out, changed = _rename_keys(state, lambda k: k.removeprefix(self.prefix))
        return out, self._record(f"stripped {self.prefix!r} from {len(changed)} keys", changed)


@dataclass(frozen=True)
class AddPrefix(Fix):
    """Put ``prefix`` in front of every key."""

    prefix: str
    reason: str = ""

    def describe(self) -> str:
        return f"add {self.prefix!r} in front of the keys"

    def apply(self, state: State) -> tuple[dict[str, Any], FixRecord]:
        out, changed = _rename_keys(state, lambda k: self.prefix + k)
        return out, self._record(f"added {self.prefix!r} to {len(changed)} keys", changed)


@dataclass(frozen=True)
class Rename(Fix):
    """Rename keys by an explicit ``{old: new}`` mapping (stored as sorted-by-order pairs)."""

    mapping: tuple[tuple[str, str], ...]
    reason: str = ""
    safe: bool = True
    allow: ClassVar[str] = "rename"

    def __post_init__(self) -> None:
        object.__setattr__(self, "mapping", _pairs(self.mapping))

    def describe(self) -> str:
        first = ", ".join(f"{a} -> {b}" for a, b in self.mapping[:2])
        more = f" and {len(self.mapping) - 2} more" if len(self.mapping) > 2 else ""
        return f"rename {len(self.mapping)} keys ({first}{more})"

    def apply(self, state: State) -> tuple[dict[str, Any], FixRecord]:
        table = dict(self.mapping)
        absent = [k for k in table if k not in state]
        if absent:
            raise IncompatibleCheckpointError(
                f"cannot rename {absent[0]!r}: the checkpoint has no such key"
            )
        out, changed = _rename_keys(state, lambda k: table.get(k, k))
        return out, self._record(f"renamed {len(changed)} keys", changed)


@dataclass(frozen=True)
class RenameRegex(Fix):
    """Rename every key matching ``pattern`` with ``re.sub(pattern, repl, key, count=1)``."""

    pattern: str
    repl: str
    reason: str = ""
    safe: bool = True
    allow: ClassVar[str] = "rename"

    def describe(self) -> str:
        return f"rename keys matching {self.pattern!r} to {self.repl!r}"

    def apply(self, state: State) -> tuple[dict[str, Any], FixRecord]:
        regex = re.compile(self.pattern)
        out, changed = _rename_keys(state, lambda k: regex.sub(self.repl, k, count=1))
        return out, self._record(f"renamed {len(changed)} keys by {self.pattern!r}", changed)


@dataclass(frozen=True)
class UndoDrift(Fix):
    """Rename keys of a known newer layout back to the official one (:data:`midaskit.drift.DRIFTS`,
    e.g. Swin saved by timm >= 0.9)."""

    name: str
    reason: str = ""

    def describe(self) -> str:
        return f"undo the layout drift {self.name!r}"

    def apply(self, state: State) -> tuple[dict[str, Any], FixRecord]:
        from ..drift import DRIFTS, undo_drift_key

        drift = next((d for d in DRIFTS if d.name == self.name), None)
        if drift is None:
            raise IncompatibleCheckpointError(f"unknown layout drift {self.name!r}")
        out, changed = _rename_keys(state, lambda k: undo_drift_key(k, drift))
        return out, self._record(f"renamed {plural(len(changed), 'key')} back", changed)


@dataclass(frozen=True)
class DropKeys(Fix):
    """Leave ``keys`` out. With ``expected``, each stored value is first checked to equal
    ``expected(key)`` (derived buffers: verify, then drop) and a difference refuses the fix."""

    keys: tuple[str, ...]
    reason: str = ""
    safe: bool = True
    allow_as: str = "drop-keys"
    expected: Callable[[str], Any] | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "keys", tuple(self.keys))

    def describe(self) -> str:
        check = " after checking them against the computed values" if self.expected else ""
        return f"drop {plural(len(self.keys), 'key')} ({_first(self.keys)}){check}"

    def apply(self, state: State) -> tuple[dict[str, Any], FixRecord]:
        drop = set(self.keys)
        checked = 0
        if self.expected is not None:
            for key in self.keys:
                value = state.get(key)
                if value is None or isinstance(value, TensorMeta):
                    continue
                _check_equal(key, _tensor(value), self.expected(key))
                checked += 1
        out = {k: v for k, v in state.items() if k not in drop}
        dropped = [k for k in self.keys if k in state]
        verified = f" (checked {checked} against the computed values)" if checked else ""
        return out, self._record(f"dropped {plural(len(dropped), 'key')}{verified}", dropped)


def _check_equal(key: str, stored, expected) -> None:
    import torch

    same = stored.shape == expected.shape and torch.equal(stored.cpu(), expected.to(stored.dtype))
    if not same:
        raise IncompatibleCheckpointError(
            f"{key} in the file differs from the value your model computes "
            f"(file {format_shape(stored.shape)}, model {format_shape(expected.shape)}): the file "
            "was made for another input size or window; it cannot be dropped as a copy"
        )


def _first(keys: tuple[str, ...], n: int = 2) -> str:
    more = f", ... {len(keys) - n} more" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


@dataclass(frozen=True)
class FillDerived(Fix):
    """Add buffers the file lacks but that are computed, not learned (``relative_position_index``,
    ``num_batches_tracked`` = 0). ``derive(key)`` computes a value; ``metas`` gives the shapes."""

    keys: tuple[str, ...]
    metas: tuple[tuple[str, TensorMeta], ...] = ()
    reason: str = "computed buffers the file does not store"
    derive: Callable[[str], Any] | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "keys", tuple(self.keys))
        object.__setattr__(self, "metas", _pairs(self.metas))

    def describe(self) -> str:
        return f"compute {len(self.keys)} derived buffers ({_first(self.keys)})"

    def _meta(self, key: str) -> TensorMeta:
        meta = dict(self.metas).get(key)
        if meta is not None:
            return meta
        if key.rpartition(".")[2] == NUM_BATCHES_TRACKED:
            return TensorMeta((), "int64")
        raise IncompatibleCheckpointError(f"no shape known for the derived buffer {key}")

    def _value(self, key: str):
        import torch

        if self.derive is not None:
            value = self.derive(key)
        elif key.rpartition(".")[2] == NUM_BATCHES_TRACKED:
            value = torch.tensor(0)
        else:
            raise IncompatibleCheckpointError(
                f"cannot compute {key}: this target has no way to derive it (use --model)"
            )
        return value.to(_torch_dtype(self._meta(key).dtype))

    def apply(self, state: State) -> tuple[dict[str, Any], FixRecord]:
        metas_only = all(isinstance(v, TensorMeta) for v in state.values())
        out = dict(state)
        for key in self.keys:
            out[key] = self._meta(key) if metas_only else self._value(key)
        return out, self._record(f"computed {len(self.keys)} derived buffers", self.keys)


@dataclass(frozen=True)
class FillUnused(Fix):
    """Add zero tensors for keys the model loads but never uses in forward (a dropped head)."""

    metas: tuple[tuple[str, TensorMeta], ...]
    reason: str = "the model never uses these keys in forward; strict loading needs them"

    def __post_init__(self) -> None:
        object.__setattr__(self, "metas", _pairs(self.metas))

    def describe(self) -> str:
        return f"fill {len(self.metas)} unused keys with zeros ({_first(tuple(dict(self.metas)))})"

    def apply(self, state: State) -> tuple[dict[str, Any], FixRecord]:
        metas_only = all(isinstance(v, TensorMeta) for v in state.values())
        out = dict(state)
        for key, meta in self.metas:
            if metas_only:
                out[key] = meta
            else:
                import torch

                out[key] = torch.zeros(meta.shape, dtype=_torch_dtype(meta.dtype))
        keys = [k for k, _ in self.metas]
        return out, self._record(f"filled {len(keys)} unused keys with zeros", keys)


def _map_values(state: State, keys, meta_fn, tensor_fn) -> dict[str, Any]:
    out = dict(state)
    for key in keys:
        value = state[key]
        out[key] = meta_fn(value) if isinstance(value, TensorMeta) else tensor_fn(_tensor(value))
    return out


@dataclass(frozen=True)
class Reshape(Fix):
    """Give tensors a new shape with the same elements (a 1x1 conv weight <-> a linear weight)."""

    shapes: tuple[tuple[str, tuple[int, ...]], ...]
    reason: str = "the same weights stored for another layer type"

    def __post_init__(self) -> None:
        object.__setattr__(self, "shapes", _pairs(self.shapes))

    def describe(self) -> str:
        key, shape = self.shapes[0]
        return f"reshape {len(self.shapes)} weights ({key} to {format_shape(shape)})"

    def apply(self, state: State) -> tuple[dict[str, Any], FixRecord]:
        table = dict(self.shapes)
        out = dict(state)
        for key, shape in table.items():
            if meta_of(state[key]).numel != TensorMeta(shape).numel:
                raise IncompatibleCheckpointError(f"cannot reshape {key} to {format_shape(shape)}")
            out.update(_map_values(state, [key], lambda m, s=shape: TensorMeta(s, m.dtype),
                                   lambda t, s=shape: t.reshape(s)))  # same elements, new view
        return out, self._record(f"reshaped {len(table)} weights", list(table))


@dataclass(frozen=True)
class AdaptInputChannels(Fix):
    """Adapt a first conv's weight ``(O, C_file, kh, kw)`` to ``(O, in_channels, kh, kw)``.

    Modes: ``"drop-extra"`` keeps the first ``in_channels`` (RGB-D -> RGB); ``"mean"`` gives each
    new channel the sum over the file's channels divided by ``in_channels`` (for fewer channels)
    or repeats the file's channels scaled by ``C_file / in_channels`` (for more), so a grey or
    repeated input keeps its activations; ``"zero-pad"`` adds zero weights for extra channels.
    """

    key: str
    in_channels: int
    mode: str = "drop-extra"
    reason: str = ""
    safe: bool = False
    allow: ClassVar[str] = "adapt-input-channels"

    def __post_init__(self) -> None:
        if self.mode not in ADAPT_MODES:
            raise ValueError(f"unknown mode {self.mode!r}; choose one of {', '.join(ADAPT_MODES)}")

    def describe(self) -> str:
        return f"adapt {self.key} to {self.in_channels} input channels ({self.mode})"

    def _adapt(self, w):
        import torch

        c_file, c = w.shape[1], self.in_channels
        if self.mode == "drop-extra":
            if c > c_file:
                raise IncompatibleCheckpointError("drop-extra needs fewer channels; use zero-pad")
            return w[:, :c].clone()
        if self.mode == "zero-pad":
            if c < c_file:
                raise IncompatibleCheckpointError("zero-pad needs more channels; use drop-extra")
            pad = torch.zeros((w.shape[0], c - c_file, *w.shape[2:]), dtype=w.dtype)
            return torch.cat([w, pad], dim=1)
        work = w.float() if w.dtype in (torch.float16, torch.bfloat16) else w
        if c <= c_file:  # mean: each channel carries an equal share of the summed response
            return (work.sum(1, keepdim=True) / c).repeat(1, c, 1, 1).to(w.dtype)
        reps = -(-c // c_file)  # ceil
        return (work.repeat(1, reps, 1, 1)[:, :c] * (c_file / c)).to(w.dtype)

    def apply(self, state: State) -> tuple[dict[str, Any], FixRecord]:
        def meta_fn(m: TensorMeta) -> TensorMeta:
            return TensorMeta((m.shape[0], self.in_channels, *m.shape[2:]), m.dtype)

        c_file = meta_of(state[self.key]).shape[1]
        out = _map_values(state, [self.key], meta_fn, self._adapt)
        summary = f"adapted {self.key} from {c_file} to {self.in_channels} input channels " \
                  f"({self.mode})"
        return out, self._record(summary, [self.key])


_WIDENING = {
    "float16": ("float32", "float64"),
    "bfloat16": ("float32", "float64"),
    "float32": ("float64",),
    "int32": ("int64",),
    "int16": ("int32", "int64"),
    "int8": ("int16", "int32", "int64"),
    "uint8": ("int16", "int32", "int64"),
}


@dataclass(frozen=True)
class CastDtype(Fix):
    """Cast ``keys`` (all floating entries when empty) to ``dtype``; safe when it widens."""

    dtype: str
    keys: tuple[str, ...] = ()
    reason: str = ""
    safe: bool = True
    allow: ClassVar[str] = "cast"

    def __post_init__(self) -> None:
        object.__setattr__(self, "keys", tuple(self.keys))

    @staticmethod
    def is_widening(src: str, dst: str) -> bool:
        return src == dst or dst in _WIDENING.get(src, ())

    def describe(self) -> str:
        which = f"{len(self.keys)} tensors" if self.keys else "every floating tensor"
        return f"cast {which} to {self.dtype}"

    def apply(self, state: State) -> tuple[dict[str, Any], FixRecord]:
        keys = self.keys or tuple(k for k, v in state.items() if meta_of(v).is_floating)
        keys = tuple(k for k in keys if k in state and meta_of(state[k]).dtype != self.dtype)
        out = _map_values(state, keys, lambda m: TensorMeta(m.shape, self.dtype),
                          lambda t: t.to(_torch_dtype(self.dtype)))
        return out, self._record(f"cast {len(keys)} tensors to {self.dtype}", keys)
