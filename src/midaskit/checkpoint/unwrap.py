"""Finding the state dict inside whatever a training script saved around it.

Checkpoints arrive bare, or as ``{"model": ..., "optimizer": ...}``, Lightning's ``{"state_dict":
..., "epoch": ..., "optimizer_states": ...}``, ``state_dict``/``ema``/``model_ema`` side by side,
nested inside each other, or (read in inspect mode) as a whole pickled ``nn.Module``. We walk the
tree once, score every mapping that holds tensors, and pick the most plausible one: the most
tensors, dotted keys, never optimizer state, the plain weights before their EMA copy. What else the
file holds is described, so the doctor can mention it.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field

from midaskit.errors import CheckpointFormatError

from .lazy import LazyTensor
from .safe_pickle import Placeholder

__all__ = ["Unwrapped", "find_state_dict", "describe", "is_ema_path"]

MAX_DEPTH = 32  # containers nested deeper than this are not a training script's checkpoint
# submodules visited when flattening a pickled model; a model has hundreds, but a pickle can share
# one submodule under two names at every level, doubling the walk 32 times
MAX_SUBMODULES = 100_000
# subtrees that hold training state, never the model's weights
_TRAINING_STATE_KEYS = frozenset(
    {
        "optimizer", "optimizers", "optimizer_states", "optimizer_state_dict", "optim", "opt",
        "lr_scheduler", "lr_schedulers", "scheduler", "schedulers", "scaler", "grad_scaler", "amp",
    }
)  # fmt: skip
_EMA_WORDS = frozenset({"ema", "shadow", "averaged", "swa"})


@dataclass
class Unwrapped:
    """The state dict found inside a checkpoint, and what surrounds it.

    Attributes:
        tensors: ``{key: LazyTensor}`` in file order.
        path: the container keys taken to reach it; ``()`` for a bare state dict.
        candidates: other ``(path, tensor count)`` that hold tensors, best first (EMA copies, ...).
        extras: what else the file holds, by ``/``-joined path, e.g. ``{"epoch": "17"}``.
        non_tensor_entries: entries inside the state dict that are not tensors, described.
        module_class: the class of a whole pickled model the tensors were taken from (inspect
            mode), else ``None``.
    """

    tensors: dict[str, LazyTensor]
    path: tuple[str, ...]
    candidates: list[tuple[tuple[str, ...], int]] = field(default_factory=list)
    extras: dict[str, str] = field(default_factory=dict)
    non_tensor_entries: dict[str, str] = field(default_factory=dict)
    module_class: str | None = None


@dataclass
class _Candidate:
    path: tuple[str, ...]
    mapping: dict
    count: int
    dotted: int
    order: int
    module_class: str | None

    @property
    def rank(self) -> tuple[int, int, int, int]:
        return (self.count, self.dotted, -len(self.path), -self.order)


def is_ema_path(path: tuple[str, ...]) -> bool:
    """True when a container key on ``path`` names an EMA/averaged copy (``ema``, ``model_ema``)."""
    return any(_EMA_WORDS & set(seg.lower().replace("-", "_").split("_")) for seg in path)


def find_state_dict(
    root: object,
    *,
    path: tuple[str, ...] | None = None,
    prefer_ema: bool = False,
    source: str | None = None,
) -> Unwrapped:
    """Find the state dict inside ``root`` (an opened checkpoint's ``root``).

    Args:
        root: the unpickled tree.
        path: take the candidate at exactly this path instead of choosing.
        prefer_ema: choose an EMA copy when there is one of comparable size.
        source: the file name, for messages.

    Raises:
        CheckpointFormatError: no tensors anywhere (or none at ``path``).
    """
    where = f"{source}: " if source else ""
    try:
        candidates = _walk(root)
    except CheckpointFormatError as exc:  # a pickled model too large to flatten
        raise CheckpointFormatError(f"{where}{exc}") from None
    if not candidates:
        raise CheckpointFormatError(f"{where}no tensors found: the file holds {_summary(root)}")
    if path is not None:
        chosen = next((c for c in candidates if c.path == tuple(path)), None)
        if chosen is None:
            raise CheckpointFormatError(f"{where}no tensors at {'/'.join(path) or '(root)'}")
    else:
        chosen = _choose(candidates, prefer_ema)
    tensors, rest = {}, {}
    for key, value in chosen.mapping.items():
        if type(key) is str and isinstance(value, LazyTensor):
            tensors[key] = value
        else:
            rest[key if type(key) is str else repr(key)] = describe(value)
    others = sorted((c for c in candidates if c is not chosen), key=lambda c: c.rank, reverse=True)
    return Unwrapped(
        tensors=tensors,
        path=chosen.path,
        candidates=[(c.path, c.count) for c in others],
        extras=_extras(root, chosen.path),
        non_tensor_entries=rest,
        module_class=chosen.module_class,
    )


def _choose(candidates: list[_Candidate], prefer_ema: bool) -> _Candidate:
    best = max(c.count for c in candidates)
    # an EMA copy and the plain weights have (nearly) the same tensors; a small dict is not a rival
    pool = [c for c in candidates if is_ema_path(c.path) == prefer_ema and 2 * c.count >= best]
    return max(pool or candidates, key=lambda c: c.rank)


def _walk(root: object) -> list[_Candidate]:
    """Every mapping holding tensors, outside training state, depth-first in file order."""
    found: list[_Candidate] = []
    seen: set[int] = set()
    stack: list[tuple[object, tuple[str, ...]]] = [(root, ())]
    while stack:
        node, path = stack.pop()
        if id(node) in seen or len(path) > MAX_DEPTH:
            continue
        seen.add(id(node))
        module_class = None
        if _is_module(node):
            module_class = node.qualname  # type: ignore[attr-defined]
            node = _module_state_dict(node)  # its submodules are flattened into it
        if isinstance(node, dict) and _is_optimizer(node):
            continue
        if isinstance(node, dict):
            keys = [k for k, v in node.items() if type(k) is str and isinstance(v, LazyTensor)]
            if keys:
                dotted = sum("." in k for k in keys)
                found.append(_Candidate(path, node, len(keys), dotted, len(found), module_class))
            if module_class:
                continue
        children = [
            (path + (key,), value)
            for key, value in _items(node)
            if key.lower() not in _TRAINING_STATE_KEYS and _is_container(value)
        ]
        stack.extend((value, child) for child, value in reversed(children))
    return found


def _items(node: object) -> Iterator[tuple[str, object]]:
    """A container's ``(key, value)`` pairs with string keys (list indices become ``"0"``...)."""
    if isinstance(node, Placeholder):
        node = node.state
    if isinstance(node, dict):
        yield from ((k if type(k) is str else repr(k), v) for k, v in node.items())
    elif isinstance(node, list | tuple):
        yield from ((str(i), v) for i, v in enumerate(node))


def _is_container(value: object) -> bool:
    return isinstance(value, dict | list | tuple) or (
        isinstance(value, Placeholder) and isinstance(value.state, dict)
    )


def _is_optimizer(node: dict) -> bool:
    return "state" in node and "param_groups" in node


def _is_module(node: object) -> bool:
    state = getattr(node, "state", None) if isinstance(node, Placeholder) else None
    return isinstance(state, dict) and "_parameters" in state and "_modules" in state


def _module_state_dict(module: Placeholder) -> OrderedDict:
    """What ``module.state_dict()`` would hold, from a pickled module's recorded ``__dict__``."""
    out: OrderedDict = OrderedDict()
    stack: list[tuple[str, object, int]] = [("", module, 0)]
    visits = 0
    while stack:
        prefix, mod, depth = stack.pop()
        visits += 1
        if visits > MAX_SUBMODULES:
            raise CheckpointFormatError(
                f"corrupt or hostile pickled model: {module.qualname} has more than "
                f"{MAX_SUBMODULES:,} submodules (shared submodules repeated at every level)"
            )
        state = mod.state if isinstance(mod, Placeholder) else None
        if not isinstance(state, dict) or depth > MAX_DEPTH:
            continue
        skip = state.get("_non_persistent_buffers_set")
        skip = skip if isinstance(skip, set) else set()
        for table in ("_parameters", "_buffers"):
            entries = state.get(table)
            for name, value in entries.items() if isinstance(entries, dict) else ():
                if isinstance(value, LazyTensor) and not (table == "_buffers" and name in skip):
                    out[f"{prefix}{name}"] = value
        children = state.get("_modules")
        if isinstance(children, dict):
            named = [(f"{prefix}{name}.", child, depth + 1) for name, child in children.items()]
            stack.extend(reversed(named))
    return out


def _extras(root: object, path: tuple[str, ...]) -> dict[str, str]:
    """Describe every entry beside the path taken, at each level of it."""
    extras: dict[str, str] = {}
    node = root
    for depth, segment in enumerate(path):
        if _is_module(node):
            break
        nxt = None
        for key, value in _items(node):
            if key == segment:
                nxt = value
            else:
                extras["/".join(path[:depth] + (key,))] = describe(value)
        node = nxt
    return extras


def _summary(root: object) -> str:
    """``describe(root)`` and, for a container, its first few entries."""
    entries = [f"{key}: {describe(value)}" for key, value in _items(root)]
    shown = "; ".join(entries[:6]) + ("; ..." if len(entries) > 6 else "")
    return f"{describe(root)} ({shown})" if entries else describe(root)


def describe(value: object) -> str:
    """A short, bounded description of any value found in a checkpoint."""
    if isinstance(value, LazyTensor):
        return f"tensor {value.dtype} {value.shape}"
    if isinstance(value, Placeholder):
        if _is_module(value):
            return f"pickled {value.qualname} module ({len(_module_state_dict(value))} tensors)"
        return f"{value.qualname} object (not loaded)"
    if isinstance(value, type) and issubclass(value, Placeholder):
        return f"reference to {value.qualname} (not loaded)"
    if isinstance(value, dict):
        if _is_optimizer(value):
            return f"optimizer state ({_count_tensors(value)} tensors)"
        count = sum(isinstance(v, LazyTensor) for v in value.values())
        return f"state dict ({count} tensors)" if count else f"dict with {len(value)} keys"
    if isinstance(value, list | tuple):
        if value and all(isinstance(v, dict) and _is_optimizer(v) for v in value):
            return f"optimizer state: {len(value)} optimizer(s) ({_count_tensors(value)} tensors)"
        return f"{type(value).__name__} of {len(value)} items"
    if isinstance(value, str):
        return repr(value) if len(value) <= 60 else repr(value[:57] + "...")
    if isinstance(value, bytes | bytearray):
        return f"{len(value)} bytes"
    if isinstance(value, set | frozenset):
        return f"set of {len(value)} items"
    if isinstance(value, int) and value.bit_length() > 64:  # str() refuses > 4300 digits
        return f"int of {value.bit_length()} bits"
    if value is None or isinstance(value, bool | int | float | complex):
        return str(value)
    return type(value).__name__


def _count_tensors(root: object) -> int:
    count, seen, stack = 0, set(), [(root, 0)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, LazyTensor):
            count += 1
        elif id(node) not in seen and depth <= MAX_DEPTH:
            seen.add(id(node))
            if isinstance(node, dict):
                stack.extend((v, depth + 1) for v in node.values())
            elif isinstance(node, list | tuple):
                stack.extend((v, depth + 1) for v in node)
    return count
