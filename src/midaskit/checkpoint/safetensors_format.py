"""The safetensors format: an 8-byte header length, a JSON header, then the tensors' bytes.

We parse the header ourselves (no torch, no safetensors import) and check what the format
promises: every tensor's byte range matches its shape and dtype, ranges are contiguous and
non-overlapping, and they cover the data exactly. Headers over 100 MB are refused, as the reference
implementation does.
"""

from __future__ import annotations

import json
import math
import struct

from midaskit.errors import CheckpointFormatError

from .formats import truncated
from .lazy import LazyTensor, MappedFile, Storage
from .types import DTYPE_SIZES, Loaded

__all__ = ["load_safetensors", "SAFETENSORS_DTYPES", "MAX_HEADER_BYTES"]

MAX_HEADER_BYTES = 100_000_000
# JSON values in the header, counted by their commas before parsing: ~6 per tensor, and a 2-byte
# ``{},`` parses to a 64-byte dict, so a 100 MB header could take gigabytes without a cap
MAX_HEADER_VALUES = 5_000_000
SAFETENSORS_DTYPES = {
    "F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
    "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8",
    "U64": "uint64", "U32": "uint32", "U16": "uint16", "U8": "uint8", "BOOL": "bool",
    "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2", "C64": "complex64",
}  # fmt: skip


def load_safetensors(mapped: MappedFile) -> Loaded:
    """The tensors, in file order, as ``{name: LazyTensor}``, and the ``__metadata__``."""
    path, size = mapped.path, mapped.size
    mm = mapped.map()
    if size < 8:
        raise truncated(path, "the safetensors header length is cut off")
    (header_len,) = struct.unpack("<Q", mm[:8])
    if header_len > MAX_HEADER_BYTES:
        raise CheckpointFormatError(
            f"{path}: corrupt safetensors file: its header claims {header_len:,} bytes "
            f"(the limit is {MAX_HEADER_BYTES:,})"
        )
    data_start = 8 + header_len
    if data_start > size:
        what = f"the safetensors header needs {data_start:,} bytes, the file has {size:,}"
        raise truncated(path, what)
    raw = mm[8:data_start]
    if raw.count(b",") > MAX_HEADER_VALUES:
        raise CheckpointFormatError(
            f"{path}: corrupt or hostile safetensors header: more than {MAX_HEADER_VALUES:,} "
            "values (a real header has a few per tensor)"
        )
    try:
        header = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise CheckpointFormatError(f"{path}: corrupt safetensors header ({exc})") from None
    if not isinstance(header, dict):
        raise CheckpointFormatError(f"{path}: corrupt safetensors header (not a JSON object)")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise CheckpointFormatError(f"{path}: corrupt safetensors __metadata__ (not str -> str)")

    entries = sorted(_entry(path, name, info) for name, info in header.items())
    end = 0
    for begin, stop, name, _, _ in entries:
        if begin != end:
            problem = "overlaps the previous tensor" if begin < end else "leaves a gap before it"
            raise CheckpointFormatError(f"{path}: corrupt safetensors file: {name!r:.80} {problem}")
        end = stop
    data_len = size - data_start
    if end > data_len:
        raise truncated(path, f"the tensors need {end:,} data bytes, the file has {data_len:,}")
    if end < data_len:
        raise CheckpointFormatError(
            f"{path}: corrupt safetensors file: {data_len - end:,} bytes after the last tensor"
        )
    root = {
        name: LazyTensor(Storage(mapped, name, dtype, math.prod(shape), data_start + at), 0, shape)
        for at, _, name, dtype, shape in entries
    }
    return Loaded(root, (), metadata)


def _entry(path: object, name: str, info: object) -> tuple[int, int, str, str, tuple[int, ...]]:
    """``(begin, end, name, dtype, shape)`` of one header entry, validated."""
    if not isinstance(info, dict):
        raise _bad_entry(path, name)
    dtype = SAFETENSORS_DTYPES.get(info.get("dtype"))  # type: ignore[arg-type]
    shape, offsets = info.get("shape"), info.get("data_offsets")
    if dtype is None:
        raise CheckpointFormatError(
            f"{path}: unsupported safetensors dtype {info.get('dtype')!r:.20} for {name!r:.80}"
        )
    if not isinstance(shape, list) or not all(type(n) is int and n >= 0 for n in shape):
        raise _bad_entry(path, name)
    if not isinstance(offsets, list) or len(offsets) != 2 or type(offsets[0]) is not int:
        raise _bad_entry(path, name)
    if type(offsets[1]) is not int:
        raise _bad_entry(path, name)
    begin, end = offsets
    if not 0 <= begin <= end or end - begin != math.prod(shape) * DTYPE_SIZES[dtype]:
        raise CheckpointFormatError(
            f"{path}: corrupt safetensors header: {name!r:.80} has {end - begin} bytes for a "
            f"{dtype} tensor of shape {tuple(shape)}"
        )
    return begin, end, name, dtype, tuple(shape)


def _bad_entry(path: object, name: str) -> CheckpointFormatError:
    return CheckpointFormatError(f"{path}: corrupt safetensors header entry {name!r:.80}")
