"""Plain data describing the tensors of a checkpoint without their bytes.

These types are shared by the reader, the doctor and identification; none of them imports torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, NamedTuple, Protocol

__all__ = ["TensorMeta", "DTYPE_SIZES", "Checkpoint", "Loaded", "FormatName", "Mode"]

FormatName = Literal["torch-zip", "torch-legacy", "safetensors"]
Mode = Literal["strict", "inspect"]

# bytes per element, keyed by the dtype names torch uses (``str(torch.float32)`` minus "torch.")
DTYPE_SIZES: dict[str, int] = {
    "float64": 8,
    "float32": 4,
    "float16": 2,
    "bfloat16": 2,
    "int64": 8,
    "int32": 4,
    "int16": 2,
    "int8": 1,
    "uint8": 1,
    "bool": 1,
    "complex64": 8,
    "complex128": 16,
    "float8_e4m3fn": 1,
    "float8_e5m2": 1,
    "float8_e4m3fnuz": 1,
    "float8_e5m2fnuz": 1,
    "uint16": 2,
    "uint32": 4,
    "uint64": 8,
}


@dataclass(frozen=True)
class TensorMeta:
    """Shape and dtype of one state-dict entry; enough to compare layouts without any data.

    Attributes:
        shape: the tensor's shape, ``()`` for a scalar.
        dtype: torch dtype name without the ``torch.`` prefix, e.g. ``"float32"``.
    """

    shape: tuple[int, ...]
    dtype: str = "float32"

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.numel * DTYPE_SIZES.get(self.dtype, 4)

    @property
    def is_floating(self) -> bool:
        return self.dtype.startswith(("float", "bfloat", "complex"))


class Loaded(NamedTuple):
    """What a format reader returns: the object tree, refused globals, safetensors metadata."""

    root: object
    refused: tuple[str, ...] = ()
    metadata: dict[str, str] | None = None


class _Closable(Protocol):
    def close(self) -> None: ...


@dataclass
class Checkpoint:
    """An opened checkpoint: the unpickled tree with lazy tensor leaves, and the file it maps.

    Nothing in ``root`` ran code from the file: unknown globals are refused (strict mode) or
    replaced by inert ``Placeholder`` objects (inspect mode). Close it (or use ``with``) to release
    the memory map; tensors already materialised stay valid.

    Attributes:
        path: the file that was opened.
        format: ``"torch-zip"``, ``"torch-legacy"`` or ``"safetensors"``.
        root: the unpickled object: dicts, lists, scalars, ``LazyTensor`` leaves, Placeholders.
        unsafe_globals: ``module.name`` globals that were refused (only non-empty in inspect mode).
        metadata: safetensors ``__metadata__``; ``{}`` for torch files.
        file_size: size of the file in bytes.
    """

    path: Path
    format: FormatName
    root: object
    unsafe_globals: tuple[str, ...] = ()
    metadata: dict[str, str] = field(default_factory=dict)
    file_size: int = 0
    _file: _Closable | None = field(default=None, repr=False, compare=False)

    def close(self) -> None:
        """Release the memory map (materialised tensors keep their pages alive)."""
        if self._file is not None:
            self._file.close()

    def __enter__(self) -> Checkpoint:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
