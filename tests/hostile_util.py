"""Builders of hostile and broken checkpoints shared by the hostile-input and fuzz tests.

Everything is written into a test's temporary folder; no binary fixture is committed.
"""

from __future__ import annotations

import io
import pickle
import struct
from pathlib import Path

import torch

from fuzz_util import pickle_ops
from midaskit.checkpoint.formats import LEGACY_MAGIC
from test_checkpoint_safety import FakeStorage, torch_zip_parts, write_zip_checkpoint

__all__ = [
    "CENTRAL_FIELDS",
    "legacy_bytes",
    "legacy_with_payload",
    "patch_central",
    "weights",
    "zip_with_payload",
]

# offset and struct format of the central-directory fields a test may overwrite
CENTRAL_FIELDS = {
    "version_needed": (6, "<H"),
    "flags": (8, "<H"),
    "compress_type": (10, "<H"),
    "compress_size": (20, "<I"),
    "file_size": (24, "<I"),
    "header_offset": (42, "<I"),
}


def weights() -> dict[str, torch.Tensor]:
    """The state dict every hostile file carries beside its payload."""
    return {"weight": torch.arange(6.0).reshape(2, 3)}


def _run_first(payload: bytes, pickled: bytes) -> bytes:
    # the payload runs, its result is discarded (POP), then the real object is the result
    return payload[:-1] + b"0" + pickled


def zip_with_payload(path: Path, payload: bytes) -> Path:
    """A torch-zip checkpoint whose ``data.pkl`` runs ``payload`` before the state dict."""
    state_pkl, storages = torch_zip_parts(weights())
    return write_zip_checkpoint(path, _run_first(payload, state_pkl), storages)


def legacy_with_payload(path: Path, payload: bytes) -> Path:
    """A legacy torch checkpoint whose object pickle runs ``payload`` before the state dict."""
    buf = io.BytesIO()
    torch.save(weights(), buf, _use_new_zipfile_serialization=False)
    data = buf.getvalue()
    pos = 0
    for _ in range(3):  # magic number, protocol version, sys_info: then the object
        pos = pickle_ops(data, pos)[1]
    path.write_bytes(data[:pos] + _run_first(payload, data[pos:]))
    return path


def patch_central(path: Path, member: str | bytes, **fields: int) -> Path:
    """Overwrite fields of ``member``'s central-directory entry (see ``CENTRAL_FIELDS``)."""
    raw = member.encode() if isinstance(member, str) else member
    data = bytearray(path.read_bytes())
    at = data.find(b"PK\x01\x02")
    while at >= 0:
        name_len = struct.unpack_from("<H", data, at + 28)[0]
        if data[at + 46 : at + 46 + name_len] == raw:
            for name, value in fields.items():
                offset, fmt = CENTRAL_FIELDS[name]
                struct.pack_into(fmt, data, at + offset, value)
            path.write_bytes(bytes(data))
            return path
        at = data.find(b"PK\x01\x02", at + 4)
    raise KeyError(member)


class _LegacyPickler(pickle.Pickler):
    """Pickles ``FakeStorage`` as a legacy storage id, with a view when it has one."""

    def persistent_id(self, obj: object) -> object:
        if isinstance(obj, FakeStorage):
            view = getattr(obj, "view", None)
            pid = ("storage", torch.FloatStorage, obj.key, "cpu", obj.numel)
            return pid + ((view,) if view else ())
        return None


def legacy_bytes(obj: object, storages: dict[str, bytes]) -> bytes:
    """A legacy torch file by hand: ``obj`` may hold ``TensorRecord``s of float32 storages."""
    head = b"".join(pickle.dumps(x, 2) for x in (LEGACY_MAGIC, 1001, {"little_endian": True}))
    buf = io.BytesIO()
    _LegacyPickler(buf, protocol=2).dump(obj)
    tail = pickle.dumps(list(storages), 2)
    data = b"".join(struct.pack("<q", len(raw) // 4) + raw for raw in storages.values())
    return head + buf.getvalue() + tail + data
