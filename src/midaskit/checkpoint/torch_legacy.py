"""The legacy torch format: ``torch.save`` before PyTorch 1.6 (or with the zip format turned off).

Layout, one pickle after another: the magic number, the protocol version (1001), a ``sys_info``
dict, the object itself (tensors are persistent ids ``('storage', type, key, location, numel,
view)``), then the list of storage keys; then, for each key in that order, an 8-byte little-endian
element count and the raw little-endian bytes. Storage offsets are known only once the last pickle
has been read, so storages are created empty and placed afterwards.
"""

from __future__ import annotations

import struct

from midaskit.errors import CheckpointFormatError

from .formats import LEGACY_MAGIC, truncated
from .lazy import BufferReader, MappedFile, Storage
from .safe_pickle import StorageRecord, safe_load
from .types import Loaded

__all__ = ["load_torch_legacy"]

_PROTOCOL_VERSION = 1001


def load_torch_legacy(mapped: MappedFile) -> Loaded:
    """Unpickle the object and place each storage at its byte offset after the pickles."""
    path, source = mapped.path, str(mapped.path)
    reader = BufferReader(mapped.map())
    refused: set[str] = set()

    def next_pickle(storage_loader: object = None) -> object:
        obj, names = safe_load(reader, source=source, storage_loader=storage_loader)  # type: ignore[arg-type]
        refused.update(names)
        return obj

    if next_pickle() != LEGACY_MAGIC:
        raise CheckpointFormatError(f"{path}: corrupt legacy torch file (bad magic number)")
    if next_pickle() != _PROTOCOL_VERSION:
        raise CheckpointFormatError(f"{path}: unsupported legacy torch protocol version")
    if not isinstance(next_pickle(), dict):
        raise CheckpointFormatError(f"{path}: corrupt legacy torch file (bad sys_info record)")

    roots: dict[str, Storage] = {}
    views: dict[str, tuple[Storage, Storage, int]] = {}  # key -> (view, root, element offset)

    def load_storage(record: StorageRecord) -> Storage:
        root = roots.get(record.key)
        if root is None:
            root = roots[record.key] = Storage(mapped, record.key, record.dtype, record.numel)
        if record.view is None:
            return root
        view_key, offset, size = record.view
        if view_key not in views:
            views[view_key] = (Storage(mapped, view_key, record.dtype, size), root, offset)
        return views[view_key][0]

    obj = next_pickle(load_storage)
    keys = next_pickle()
    if not isinstance(keys, list) or not all(type(k) is str for k in keys):
        raise CheckpointFormatError(f"{path}: corrupt legacy torch file (bad storage key list)")
    _place_storages(mapped, roots, keys, reader.tell())
    for view, root, offset in views.values():
        if offset < 0 or offset + view.numel > root.numel:
            raise CheckpointFormatError(f"{path}: corrupt storage view {view.key!r:.80}")
        view.byte_offset = root.byte_offset + offset * root.itemsize
    return Loaded(obj, tuple(sorted(refused)))


def _place_storages(
    mapped: MappedFile, roots: dict[str, Storage], keys: list[str], pos: int
) -> None:
    mm, path = mapped.map(), mapped.path
    for key in keys:
        storage = roots.get(key)
        if storage is None:
            raise CheckpointFormatError(f"{path}: corrupt: storage {key!r:.80} is never used")
        if pos + 8 > mapped.size:
            raise truncated(path, f"the data of storage {key!r:.80} is missing")
        (count,) = struct.unpack("<q", mm[pos : pos + 8])
        if count < storage.numel:
            raise CheckpointFormatError(
                f"{path}: corrupt: storage {key!r:.80} holds {count} elements, its tensors need "
                f"{storage.numel}"
            )
        storage.numel, storage.byte_offset = count, pos + 8
        storage.check_in_file()
        pos += 8 + storage.nbytes
    missing = [key for key, storage in roots.items() if storage.byte_offset < 0]
    if missing:
        shown = ", ".join(f"{key!r:.40}" for key in missing[:5])
        raise CheckpointFormatError(f"{path}: corrupt: no data for storages {shown}")
