"""Tensor data that stays in the file until asked for: a memory-mapped file, storages, LazyTensor.

Reading a checkpoint's layout must not read its gigabytes, and must not import torch. A
``LazyTensor`` is only a shape, a dtype, strides and a window into a ``Storage``; the storage is a
byte range of a ``MappedFile``. ``LazyTensor.materialize()`` imports torch and wraps the mapped
pages without copying them (``torch.frombuffer`` over a copy-on-write map), so tensors that share a
storage share memory, exactly as ``torch.load`` would give them.
"""

from __future__ import annotations

import math
import mmap
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from midaskit.errors import CheckpointFormatError, MidaskitError

from .formats import truncated
from .types import DTYPE_SIZES, TensorMeta

if TYPE_CHECKING:
    import torch

__all__ = ["MappedFile", "BufferReader", "Storage", "LazyTensor", "check_view"]

_MAX_NDIM = 64  # torch itself allows 64 dimensions


class MappedFile:
    """A file mapped copy-on-write on first use, shared by every storage of one checkpoint.

    Copy-on-write (``ACCESS_COPY``) keeps the pages lazy and shared with the page cache while giving
    torch a writable buffer; writes to a materialised tensor never reach the file.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.size = path.stat().st_size
        self._mm: mmap.mmap | None = None
        self._closed = False

    def map(self) -> mmap.mmap:
        if self._closed:
            raise MidaskitError(f"{self.path}: the checkpoint was closed; open it again")
        if self._mm is None:
            with open(self.path, "rb") as fh:
                self._mm = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_COPY)
        return self._mm

    def close(self) -> None:
        # Drop our reference instead of calling mmap.close(): torch.frombuffer keeps the mmap
        # object alive but not a buffer export, so an explicit close would unmap pages under
        # materialised tensors. The map is released when the last of them is.
        self._closed = True
        self._mm = None


class BufferReader:
    """``read``/``readline`` over a window of a buffer, never allocating more than remains.

    A pickle can claim a 2**60-byte string; a buffered file would try to allocate it, this returns
    what is there and the unpickler then fails cleanly.
    """

    def __init__(self, buf: mmap.mmap | bytes, start: int = 0, end: int | None = None) -> None:
        self._buf = buf
        self._pos = start
        self._end = len(buf) if end is None else min(end, len(buf))

    def tell(self) -> int:
        return self._pos

    def read(self, n: int = -1) -> bytes:
        stop = self._end if n is None or n < 0 else min(self._end, self._pos + n)
        data = self._buf[self._pos : stop]
        self._pos = stop
        return data

    def readline(self) -> bytes:
        nl = self._buf.find(b"\n", self._pos, self._end)
        return self.read(self._end - self._pos if nl < 0 else nl + 1 - self._pos)

    def readinto(self, b: bytearray | memoryview) -> int:
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)


class Storage:
    """A typed byte range of a mapped file holding ``numel`` elements of ``dtype``.

    Attributes:
        key: the storage's name in the file (zip member name, legacy key, safetensors entry).
        dtype: element dtype name, e.g. ``"float32"``.
        numel: number of elements.
        byte_offset: where the bytes start in the file; ``-1`` until known (legacy files).
            Zip storages find it on first use (``locate`` reads the member's local header), so
            reading a layout touches no page next to the tensor data.
        big_endian: the bytes are big-endian and must be swapped when materialised.
    """

    __slots__ = ("key", "dtype", "numel", "big_endian", "_offset", "_locate", "_file", "_tensor")

    def __init__(
        self,
        file: MappedFile,
        key: str,
        dtype: str,
        numel: int,
        byte_offset: int = -1,
        *,
        big_endian: bool = False,
        locate: Callable[[], int] | None = None,
    ) -> None:
        self._file = file
        self.key = key
        self.dtype = dtype
        self.numel = numel
        self.big_endian = big_endian
        self._offset = byte_offset
        self._locate = locate
        self._tensor: torch.Tensor | None = None

    @property
    def byte_offset(self) -> int:
        if self._locate is not None:
            self._offset, self._locate = self._locate(), None
            self.check_in_file()
        return self._offset

    @byte_offset.setter
    def byte_offset(self, value: int) -> None:
        self._offset, self._locate = value, None

    @property
    def itemsize(self) -> int:
        return DTYPE_SIZES[self.dtype]

    @property
    def nbytes(self) -> int:
        return self.numel * self.itemsize

    def retype(self, dtype: str) -> None:
        """Give an untyped byte storage its tensor's dtype (so byte swaps are per element)."""
        numel, rest = divmod(self.nbytes, DTYPE_SIZES[dtype])
        if self.dtype == "uint8" and not rest and self._tensor is None:
            self.dtype, self.numel = dtype, numel

    def check_in_file(self) -> None:
        """Raise when the storage's bytes lie outside the file (truncated or corrupt)."""
        end = self.byte_offset + self.nbytes
        if self.byte_offset < 0 or end > self._file.size:
            what = f"storage {self.key!r:.80} needs bytes {self.byte_offset}..{end}"
            raise truncated(self._file.path, f"{what}, the file has {self._file.size}")

    def as_torch(self) -> torch.Tensor:
        """The whole storage as a 1-D tensor over the mapped pages (cached: views share it)."""
        if self._tensor is None:
            import torch

            dtype = getattr(torch, self.dtype)
            if self.nbytes == 0:
                self._tensor = torch.empty(0, dtype=dtype)
                return self._tensor
            self.check_in_file()
            raw = torch.frombuffer(
                self._file.map(), dtype=torch.uint8, count=self.nbytes, offset=self.byte_offset
            )
            if self.byte_offset % self.itemsize:
                raw = raw.clone()  # unaligned (legacy files): copy once to an aligned buffer
            if self.big_endian and sys.byteorder == "little" and self.itemsize > 1:
                raw = raw.view(-1, self.itemsize).flip(1).contiguous().view(-1)  # (numel * size,)
            self._tensor = raw.view(dtype)
        return self._tensor


def check_view(
    storage: Storage, dtype: str, offset: int, shape: tuple[int, ...], stride: tuple[int, ...]
) -> None:
    """Raise ``CheckpointFormatError`` unless the strided view lies inside the storage.

    ``offset``, ``shape`` and ``stride`` count elements of ``dtype``, which may differ from the
    storage's (``_rebuild_tensor_v3`` views an untyped byte storage as float8, uint16, ...).
    """
    capacity, rest = divmod(storage.nbytes, DTYPE_SIZES[dtype])
    if rest:
        raise CheckpointFormatError(
            f"corrupt tensor record: storage {storage.key!r:.80} of {storage.nbytes} bytes is not "
            f"a whole number of {dtype} elements"
        )
    if len(shape) != len(stride) or len(shape) > _MAX_NDIM:
        raise CheckpointFormatError(
            f"corrupt tensor record: size {shape} and stride {stride} do not match"
        )
    if offset < 0 or any(s < 0 for s in shape) or any(s < 0 for s in stride):
        raise CheckpointFormatError(
            f"corrupt tensor record: negative offset/size/stride ({offset}, {shape}, {stride})"
        )
    if math.prod(shape) == 0:
        return
    last = offset + sum((n - 1) * s for n, s in zip(shape, stride, strict=True))
    if last >= capacity:
        raise CheckpointFormatError(
            f"corrupt tensor record: a {shape} view at offset {offset} reaches element {last} of "
            f"storage {storage.key!r:.80}, which holds {capacity}"
        )


def _contiguous_stride(shape: tuple[int, ...]) -> tuple[int, ...]:
    stride, acc = [], 1
    for n in reversed(shape):
        stride.append(acc)
        acc *= max(n, 1)
    return tuple(reversed(stride))


class LazyTensor:
    """A tensor's layout and a window into its storage; the bytes are read only on ``materialize``.

    Attributes:
        shape: the tensor's size, ``()`` for a scalar.
        dtype: dtype name, e.g. ``"bfloat16"``.
        stride: element strides (non-contiguous views keep theirs).
        storage_offset: first element inside ``storage``.
        storage: the shared ``Storage`` (tensors of one storage share memory once materialised).
    """

    __slots__ = ("storage", "storage_offset", "shape", "stride", "dtype", "_flags")

    def __init__(
        self,
        storage: Storage,
        storage_offset: int,
        shape: tuple[int, ...],
        stride: tuple[int, ...] | None = None,
        dtype: str | None = None,
        flags: dict[str, bool] | None = None,
    ) -> None:
        self.storage = storage
        self.storage_offset = storage_offset
        self.shape = shape
        self.stride = _contiguous_stride(shape) if stride is None else stride
        self.dtype = storage.dtype if dtype is None else dtype
        self._flags = flags or {}

    @property
    def meta(self) -> TensorMeta:
        return TensorMeta(self.shape, self.dtype)

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.numel * DTYPE_SIZES[self.dtype]

    def is_contiguous(self) -> bool:
        return all(
            n <= 1 or s == c
            for n, s, c in zip(self.shape, self.stride, _contiguous_stride(self.shape), strict=True)
        )

    def materialize(self) -> torch.Tensor:
        """The CPU tensor, memory-mapped where possible (imports torch on first use)."""
        base = self.storage.as_torch()
        if self.dtype != self.storage.dtype:  # _rebuild_tensor_v3: typed view of byte storage
            import torch

            base = base.view(getattr(torch, self.dtype))
        tensor = base.as_strided(self.shape, self.stride, self.storage_offset)
        if self._flags.get("conj"):
            tensor = tensor.conj()
        if self._flags.get("neg"):
            tensor = tensor._neg_view()
        return tensor

    def __repr__(self) -> str:
        return f"LazyTensor(shape={self.shape}, dtype={self.dtype})"
