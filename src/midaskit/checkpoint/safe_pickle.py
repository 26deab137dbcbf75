"""The restricted unpickler: tensor records become ``LazyTensor``; nothing from the file runs.

A checkpoint's pickle may name any Python callable; ``torch.load(weights_only=False)`` imports and
calls it. Here every global goes through ``find_class``, which resolves only the handful that
``torch.save`` emits for plain tensor data, and resolves them to our own inert functions (torch is
never imported). Any other global is *refused*: it becomes an inert ``Placeholder`` class that only
records what the pickle passed to it, and its name is collected so that strict mode can refuse the
file naming every offender.

We build on Python's pure ``pickle._Unpickler`` rather than the C one because it lets us police
opcodes: its memo is a dict (the C unpickler grows an array to a 4-byte index from the file, a cheap
way to demand 64 GiB), extension codes (``EXT1/2/4`` may return cached objects without
``find_class``) are refused, ``BUILD`` only touches placeholders and ``OrderedDict`` attributes, and
every dict/set key is checked before hashing (hashing a deeply nested tuple overflows the C stack).
"""

from __future__ import annotations

import _compat_pickle
import pickle
import reprlib
import struct
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, NamedTuple

from midaskit.errors import CheckpointFormatError, UnsafeCheckpointError

from .formats import exception_text
from .lazy import LazyTensor, Storage, check_view
from .types import DTYPE_SIZES

__all__ = [
    "Placeholder",
    "StorageType",
    "DType",
    "StorageRecord",
    "SafeUnpickler",
    "safe_load",
    "unsafe_error",
    "ALLOWED_GLOBALS",
]

_MAX_KEY_NODES = 10_000  # a dict/set key is hashed recursively by C code: bound its size
_MAX_KEY_DEPTH = 32
# entries added to lists, dicts and sets over one pickle: torch pickles ~2 per tensor, so a real
# checkpoint has thousands; memo references make an entry cost 2 bytes of file and ~100 of memory
_MAX_ITEMS = 5_000_000
_MAX_NAME = 120  # characters of a refused global's name shown in messages
_MAX_SHOWN = 20  # refused globals named in the message (the error's ``globals`` holds all)


class Placeholder:
    """Inert stand-in for a global the checkpoint names but we refuse to import.

    Each refused global becomes a subclass with ``qualname`` set; calling it (or an instance),
    ``NEWOBJ`` or ``INST``/``OBJ`` on it, ``BUILD`` and item/append opcodes only record data.

    Attributes:
        qualname: the refused ``module.name``, e.g. ``"argparse.Namespace"``.
        args: positional arguments the pickle passed (already-inert data).
        kwargs: keyword arguments (``NEWOBJ_EX``).
        state: what ``BUILD`` passed (``__setstate__``), e.g. a pickled module's ``__dict__``.
        items: ``SETITEMS``/``APPENDS`` contents, as ``(key, value)`` pairs or values.
    """

    qualname: str = "?"

    def __new__(cls, *args: object, **kwargs: object) -> Placeholder:
        obj = object.__new__(cls)
        obj.args, obj.kwargs, obj.state, obj.items = args, kwargs, None, []
        return obj

    def __init__(self, *args: object, **kwargs: object) -> None:
        pass  # __new__ recorded the arguments; NEWOBJ calls only __new__

    def __call__(self, *args: object, **kwargs: object) -> Placeholder:
        # a refused global called on the result of another (getattr chains): record, stay inert
        return type(self)(*args, **kwargs)

    def __setstate__(self, state: object) -> None:
        self.state = state

    def __setitem__(self, key: object, value: object) -> None:
        self.items.append((key, value))

    def append(self, value: object) -> None:
        self.items.append(value)

    def extend(self, values: Iterable[object]) -> None:
        self.items.extend(values)

    def __repr__(self) -> str:
        short = reprlib.Repr()
        short.maxlevel, short.maxstring, short.maxother = 2, 40, 40
        return f"<Placeholder {self.qualname}{short.repr(self.args)}>"


def _placeholder_class(qualname: str) -> type[Placeholder]:
    name = qualname.rsplit(".", 1)[-1] or "Placeholder"
    return type(name, (Placeholder,), {"qualname": qualname, "__module__": __name__})


@dataclass(frozen=True, slots=True)
class StorageType:
    """Stand-in for ``torch.FloatStorage`` and friends: only the element dtype matters."""

    dtype: str


@dataclass(frozen=True, slots=True)
class DType:
    """Stand-in for a ``torch.float32``-style dtype object."""

    name: str


@dataclass(frozen=True, slots=True)
class _TypeMarker:
    """Stand-in for ``torch.Tensor`` / ``Parameter`` as passed to ``_rebuild_from_type_v2``."""

    qualname: str


class StorageRecord(NamedTuple):
    """A parsed ``('storage', storage_type, key, location, numel[, view])`` persistent id."""

    dtype: str
    key: str
    location: str
    numel: int
    view: tuple[str, int, int] | None


# -- inert replacements for the globals torch.save emits ------------------------------------------


def _ints(value: object, what: str) -> tuple[int, ...]:
    if not isinstance(value, tuple | list) or not all(type(v) is int for v in value):
        raise CheckpointFormatError(f"corrupt tensor record: {what} is not a tuple of ints")
    return tuple(value)


def _make_tensor(
    storage: object,
    storage_offset: object,
    size: object,
    stride: object,
    dtype: str | None = None,
    metadata: object = None,
) -> LazyTensor:
    if not isinstance(storage, Storage):
        raise CheckpointFormatError("corrupt tensor record: it does not point at a storage")
    if type(storage_offset) is not int:
        raise CheckpointFormatError("corrupt tensor record: storage offset is not an int")
    shape, strides = _ints(size, "size"), _ints(stride, "stride")
    if dtype is None:
        dtype = storage.dtype
    elif dtype != storage.dtype:
        storage.retype(dtype)
    check_view(storage, dtype, storage_offset, shape, strides)
    flags = {}
    if isinstance(metadata, dict):
        flags = {k: v for k, v in metadata.items() if k in ("conj", "neg") and v is True}
    return LazyTensor(storage, storage_offset, shape, strides, dtype, flags)


def _rebuild_tensor(storage: object, storage_offset: object, size: object, stride: object) -> Any:
    return _make_tensor(storage, storage_offset, size, stride)


def _rebuild_tensor_v2(
    storage: object,
    storage_offset: object,
    size: object,
    stride: object,
    requires_grad: object = False,
    backward_hooks: object = None,
    metadata: object = None,
) -> LazyTensor:
    return _make_tensor(storage, storage_offset, size, stride, metadata=metadata)


def _rebuild_tensor_v3(
    storage: object,
    storage_offset: object,
    size: object,
    stride: object,
    requires_grad: object,
    backward_hooks: object,
    dtype: object,
    metadata: object = None,
) -> LazyTensor:
    if not isinstance(dtype, DType):
        raise CheckpointFormatError("corrupt tensor record: dtype is not a torch dtype")
    return _make_tensor(storage, storage_offset, size, stride, dtype.name, metadata)


def _rebuild_parameter(data: object, *_ignored: object) -> LazyTensor:
    if not isinstance(data, LazyTensor):
        raise CheckpointFormatError("corrupt parameter record: its data is not a tensor")
    return data


_REBUILDERS = (_rebuild_tensor, _rebuild_tensor_v2, _rebuild_tensor_v3, _rebuild_parameter)


def _rebuild_from_type_v2(func: object, new_type: object, args: object, state: object) -> object:
    # a tensor subclass or a tensor with attributes: keep the tensor, drop the type and state
    if func not in _REBUILDERS or not isinstance(args, tuple):
        raise CheckpointFormatError("corrupt tensor record: unexpected _rebuild_from_type_v2 call")
    return func(*args)  # type: ignore[operator]


def _check_keys(keys: Iterable[object]) -> None:
    """Refuse dict/set keys whose hashing could exhaust the C stack or the CPU."""
    for key in keys:
        if type(key) in (str, int, float, bool, bytes) or key is None:
            continue
        todo, seen = [(key, 0)], 0
        while todo:
            item, depth = todo.pop()
            seen += 1
            if depth > _MAX_KEY_DEPTH or seen > _MAX_KEY_NODES:
                raise CheckpointFormatError("corrupt pickle: a dict/set key is nested too deeply")
            if type(item) in (tuple, frozenset):
                todo.extend((child, depth + 1) for child in item)


def _ordered_dict(items: object = ()) -> OrderedDict:
    pairs = list(items.items()) if isinstance(items, dict) else list(items)  # type: ignore[arg-type]
    _check_keys(pair[0] for pair in pairs)
    return OrderedDict(pairs)


def _set(items: object = ()) -> set:
    values = list(items)  # type: ignore[call-overload]
    _check_keys(values)
    return set(values)


def _frozenset(items: object = ()) -> frozenset:
    return frozenset(_set(items))


def _bytes_like(factory: type) -> Callable[..., object]:
    def build(data: object = b"") -> object:
        if not isinstance(data, bytes | bytearray | list):  # never an int: bytes(10**12)
            raise CheckpointFormatError("corrupt pickle: bytes built from a non-bytes value")
        return factory(data)

    return build


def _complex(real: object = 0.0, imag: object = 0.0) -> complex:
    if not all(type(v) in (int, float) for v in (real, imag)):
        raise CheckpointFormatError("corrupt pickle: complex() built from non-numbers")
    return complex(real, imag)  # type: ignore[arg-type]


def _codecs_encode(text: object, encoding: object = "utf-8") -> bytes:
    # protocol 2 stores bytes as _codecs.encode(str, "latin1"); no other codec is ever needed
    if type(text) is not str or encoding not in ("latin1", "latin-1"):
        raise CheckpointFormatError("corrupt pickle: unexpected _codecs.encode call")
    return text.encode("latin1")


def _torch_size(dims: object = ()) -> tuple[int, ...]:
    return _ints(dims, "torch.Size")


def _torch_device(kind: object, index: object = None) -> str:
    if type(kind) is not str or (index is not None and type(index) is not int):
        raise CheckpointFormatError("corrupt pickle: unexpected torch.device arguments")
    return kind if index is None else f"{kind}:{index}"


_STORAGE_NAMES = {
    "Double": "float64", "Float": "float32", "Half": "float16", "BFloat16": "bfloat16",
    "Long": "int64", "Int": "int32", "Short": "int16", "Char": "int8", "Byte": "uint8",
    "Bool": "bool", "ComplexFloat": "complex64", "ComplexDouble": "complex128",
}  # fmt: skip


def _allowed_globals() -> dict[str, object]:
    allowed: dict[str, object] = {
        "collections.OrderedDict": _ordered_dict,
        "torch._utils._rebuild_tensor": _rebuild_tensor,
        "torch._utils._rebuild_tensor_v2": _rebuild_tensor_v2,
        "torch._utils._rebuild_tensor_v3": _rebuild_tensor_v3,
        "torch._utils._rebuild_parameter": _rebuild_parameter,
        "torch._utils._rebuild_parameter_with_state": _rebuild_parameter,
        "torch._tensor._rebuild_from_type_v2": _rebuild_from_type_v2,
        "torch.Tensor": _TypeMarker("torch.Tensor"),
        "torch.nn.parameter.Parameter": _TypeMarker("torch.nn.parameter.Parameter"),
        "torch.Size": _torch_size,
        "torch.device": _torch_device,
        "torch.UntypedStorage": StorageType("uint8"),
        "torch.storage.UntypedStorage": StorageType("uint8"),
        "builtins.set": _set,
        "builtins.frozenset": _frozenset,
        "builtins.bytearray": _bytes_like(bytearray),
        "builtins.bytes": _bytes_like(bytes),
        "builtins.complex": _complex,
        "_codecs.encode": _codecs_encode,
    }
    for prefix, dtype in _STORAGE_NAMES.items():
        allowed[f"torch.{prefix}Storage"] = StorageType(dtype)
        allowed[f"torch.cuda.{prefix}Storage"] = StorageType(dtype)  # pre-2.0 GPU checkpoints
    for name in DTYPE_SIZES:
        allowed[f"torch.{name}"] = DType(name)
    return allowed


ALLOWED_GLOBALS: dict[str, object] = _allowed_globals()


def _py3_name(module: str, name: str) -> tuple[str, str]:
    """Python 2 pickles say ``__builtin__.set``; map them as ``fix_imports`` would (data only)."""
    if (module, name) in _compat_pickle.NAME_MAPPING:
        return _compat_pickle.NAME_MAPPING[(module, name)]
    return _compat_pickle.IMPORT_MAPPING.get(module, module), name


# -- the unpickler --------------------------------------------------------------------------------

_BASE = pickle._Unpickler  # type: ignore[attr-defined]  # pure Python: we police its opcodes


def _guard(opcode: bytes, check: Callable[[SafeUnpickler], None]) -> Callable[[Any], None]:
    original = _BASE.dispatch[opcode[0]]

    def guarded(self: SafeUnpickler) -> None:
        check(self)
        original(self)

    return guarded


def _refuse_extension(self: SafeUnpickler) -> None:
    raise CheckpointFormatError("corrupt pickle: extension codes are never in a torch file")


def _load_bytearray8(self: SafeUnpickler) -> None:
    # pickle's own allocates (and zero-fills) the declared size before reading: 2**40 bytes
    (size,) = struct.unpack("<Q", self.read(8))
    data = self.read(size)  # never more than the file holds
    if len(data) < size:
        raise CheckpointFormatError(f"truncated pickle: a bytearray of {size:,} bytes is cut off")
    self.append(bytearray(data))


def _check_build(self: SafeUnpickler) -> None:
    inst, state = self.stack[-2], self.stack[-1]
    if isinstance(inst, Placeholder):
        return
    if type(inst) is OrderedDict and type(state) is dict and all(type(k) is str for k in state):
        return  # torch keeps state_dict()._metadata this way
    raise CheckpointFormatError(f"corrupt pickle: BUILD on a {type(inst).__name__}")


class SafeUnpickler(_BASE):
    """Unpickles checkpoint data, resolving only ``ALLOWED_GLOBALS``; see the module docstring.

    Attributes:
        refused: the refused ``module.name`` globals, in order of first use.
    """

    dispatch = dict(_BASE.dispatch)
    for _op in (pickle.EXT1, pickle.EXT2, pickle.EXT4):
        dispatch[_op[0]] = _refuse_extension
    dispatch[pickle.BYTEARRAY8[0]] = _load_bytearray8
    dispatch[pickle.SETITEM[0]] = _guard(pickle.SETITEM, lambda u: u.add_items(1, u.stack[-2:-1]))
    for _op in (pickle.SETITEMS, pickle.DICT):  # MARK-based: the marked items are all of `stack`
        dispatch[_op[0]] = _guard(_op, lambda u: u.add_items(len(u.stack) // 2, u.stack[0::2]))
    for _op in (pickle.ADDITEMS, pickle.FROZENSET):
        dispatch[_op[0]] = _guard(_op, lambda u: u.add_items(len(u.stack), u.stack))
    dispatch[pickle.APPEND[0]] = _guard(pickle.APPEND, lambda u: u.add_items(1))
    for _op in (pickle.APPENDS, pickle.LIST):
        dispatch[_op[0]] = _guard(_op, lambda u: u.add_items(len(u.stack)))
    dispatch[pickle.BUILD[0]] = _guard(pickle.BUILD, _check_build)
    del _op

    def __init__(
        self, file: Any, *, storage_loader: Callable[[StorageRecord], Storage] | None = None
    ) -> None:
        super().__init__(file, encoding="utf-8")
        self.refused: dict[str, None] = {}
        self._placeholders: dict[str, type[Placeholder]] = {}
        self._storage_loader = storage_loader
        self._items = 0

    def add_items(self, count: int, keys: Iterable[object] = ()) -> None:
        """Check the ``count`` entries an opcode adds to a list/dict/set, and its ``keys``."""
        self._items += count
        if self._items > _MAX_ITEMS:
            raise CheckpointFormatError(
                f"corrupt or hostile pickle: it builds more than {_MAX_ITEMS:,} list/dict/set "
                "entries (a checkpoint has a few per tensor)"
            )
        _check_keys(keys)

    def find_class(self, module: str, name: str) -> Any:
        qualname = ".".join(_py3_name(module, name))
        allowed = ALLOWED_GLOBALS.get(qualname)
        if allowed is not None:
            return allowed
        qualname = _shown_name(qualname)
        self.refused[qualname] = None
        if qualname not in self._placeholders:
            self._placeholders[qualname] = _placeholder_class(qualname)
        return self._placeholders[qualname]

    def persistent_load(self, pid: Any) -> Any:
        if not isinstance(pid, tuple) or not pid:
            raise CheckpointFormatError(f"corrupt pickle: unexpected persistent id {pid!r:.60}")
        if pid[0] == "module" and len(pid) > 1 and isinstance(pid[1], type):
            return pid[1]  # legacy whole-model files: the class, already a refused Placeholder
        if pid[0] != "storage" or self._storage_loader is None:
            raise CheckpointFormatError(f"corrupt pickle: unexpected persistent id {pid!r:.60}")
        return self._storage_loader(_storage_record(pid))


def _shown_name(qualname: str) -> str:
    """A refused global's name fit for a one-line message: ``STACK_GLOBAL`` takes any strings,
    so a name may hold newlines or run to megabytes."""
    if not qualname.isprintable():
        qualname = qualname.encode("unicode_escape").decode("ascii")
    return qualname if len(qualname) <= _MAX_NAME else qualname[: _MAX_NAME - 3] + "..."


def _storage_record(pid: tuple) -> StorageRecord:
    if len(pid) not in (5, 6):
        raise CheckpointFormatError(f"corrupt storage record {pid!r:.80}")
    storage_type, key, location, numel = pid[1:5]
    view = pid[5] if len(pid) == 6 else None
    if not isinstance(storage_type, StorageType):
        raise CheckpointFormatError(f"unsupported storage type {storage_type!r:.60}")
    if type(key) is not str or type(location) is not str or type(numel) is not int or numel < 0:
        raise CheckpointFormatError(f"corrupt storage record {pid!r:.80}")
    if view is not None:
        if not (isinstance(view, tuple) and len(view) == 3 and type(view[0]) is str):
            raise CheckpointFormatError(f"corrupt storage view record {view!r:.80}")
        _ints(view[1:], "storage view")
    return StorageRecord(storage_type.dtype, key, location, numel, view)


def safe_load(
    file: Any,
    *,
    source: str,
    storage_loader: Callable[[StorageRecord], Storage] | None = None,
) -> tuple[object, tuple[str, ...]]:
    """Unpickle one object from ``file`` without running anything from it.

    Args:
        file: an object with ``read``/``readline`` (``BufferReader``, ``io.BytesIO``).
        source: the file's name, for messages.
        storage_loader: turns a storage persistent id into a ``Storage``.

    Returns:
        The object (with ``LazyTensor`` leaves and ``Placeholder`` for refused globals) and the
        refused globals, sorted.

    Raises:
        CheckpointFormatError: the pickle is corrupt, truncated, or nested too deeply. (If globals
            were refused before the corruption, ``UnsafeCheckpointError`` is raised instead: the
            file is hostile or a pickled object, and saying so is more useful.)
    """
    unpickler = SafeUnpickler(file, storage_loader=storage_loader)
    try:
        obj = unpickler.load()
    except CheckpointFormatError as exc:
        problem = str(exc)
    except RecursionError:
        problem = "corrupt pickle: nested too deeply"
    except (pickle.UnpicklingError, EOFError, struct.error) as exc:
        problem = f"corrupt or truncated pickle ({exception_text(exc)})"
    except (TypeError, ValueError, AttributeError, KeyError, IndexError, OverflowError) as exc:
        problem = f"corrupt pickle ({type(exc).__name__}: {exception_text(exc)})"
    except MemoryError:
        problem = "corrupt pickle: it asks for more memory than is available"
    else:
        return obj, tuple(sorted(unpickler.refused))
    if unpickler.refused:
        raise unsafe_error(source, unpickler.refused) from None
    raise CheckpointFormatError(f"{source}: {problem}") from None


def unsafe_error(source: str, refused: Iterable[str]) -> UnsafeCheckpointError:
    """The strict-mode refusal: names every offending global and what the user can do."""
    names = sorted(set(refused))
    what = "a pickled model or other Python objects, not only tensors"
    if any(n.startswith("__torch__.") for n in names):
        what = "a TorchScript program (torch.jit.save), not a state dict"
    shown = ", ".join(names[:_MAX_SHOWN])
    if len(names) > _MAX_SHOWN:
        shown += f" and {len(names) - _MAX_SHOWN:,} more"
    message = (
        f"{source}: refused to load: it holds {what}; refused globals: {shown}. "
        f"Nothing from the file was run. List its tensors anyway with `midaskit inspect {source}` "
        "(mode='inspect'), or re-save the weights only, in an environment you trust: "
        "torch.save(model.state_dict(), path)"
    )
    return UnsafeCheckpointError(message, globals=names)
