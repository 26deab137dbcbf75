"""The torch zip format (``torch.save`` since PyTorch 1.6): ``.pt``, ``.pth``, ``.ckpt``, ``.bin``.

Layout: ``<archive>/data.pkl`` (the pickled object; tensors are persistent ids naming storages),
``<archive>/data/<key>`` (one uncompressed member per storage), ``<archive>/byteorder`` and
``<archive>/version``. Members are stored uncompressed, so a storage is a byte range of the file:
we find it from the member's local header and map it, reading nothing.
"""

from __future__ import annotations

import io
import struct
import zipfile
import zlib

from midaskit.errors import CheckpointFormatError

from .formats import exception_text, truncated
from .lazy import MappedFile, Storage
from .safe_pickle import StorageRecord, safe_load
from .types import Loaded

__all__ = ["load_torch_zip"]

_MAX_PICKLE_BYTES = 1 << 30  # data.pkl is kilobytes; a gigabyte is a corrupt or hostile header
# torch stores members uncompressed; a re-zipped data.pkl may be deflated, and then its declared
# size is all that bounds the memory inflating it takes (a zip bomb is ~1000:1)
_MAX_INFLATED_PICKLE_BYTES = 64 << 20
# what zipfile raises on a corrupt archive besides BadZipFile: bad offsets (OSError, ValueError),
# undecodable names (UnicodeDecodeError), unknown versions or encryption (NotImplementedError,
# RuntimeError), short or bad deflate streams (EOFError, zlib.error)
_ZIP_ERRORS = (
    OSError, EOFError, ValueError, RuntimeError, OverflowError, struct.error, zlib.error
)
_LOCAL_HEADER = struct.Struct("<4s22xHH")  # signature, ..., name length, extra length


def load_torch_zip(mapped: MappedFile) -> Loaded:
    """Unpickle ``data.pkl`` with storages mapped lazily from the archive's members."""
    path = mapped.path
    try:
        with zipfile.ZipFile(path) as zf:
            members = {info.filename: info for info in zf.infolist()}
            prefix = _archive_prefix(mapped, members)
            big_endian = _byteorder(zf, members, prefix) == "big"
            pickle_bytes = _read_pickle(zf, members[f"{prefix}data.pkl"])
    except zipfile.BadZipFile as exc:
        if "not a zip file" in str(exc):
            what = "the zip archive has no end record (torch: 'failed finding central directory')"
            raise truncated(path, what) from None
        problem = exception_text(exc)
        raise CheckpointFormatError(f"{path}: corrupt zip archive ({problem})") from None
    except _ZIP_ERRORS as exc:
        problem = f"{type(exc).__name__}: {exception_text(exc)}"
        raise CheckpointFormatError(f"{path}: corrupt zip archive ({problem})") from None

    storages: dict[str, Storage] = {}

    def load_storage(record: StorageRecord) -> Storage:
        storage = storages.get(record.key)
        if storage is None:
            storage = _member_storage(mapped, members, prefix, record, big_endian)
            storages[record.key] = storage
        return storage

    root, refused = safe_load(
        io.BytesIO(pickle_bytes), source=str(path), storage_loader=load_storage
    )
    return Loaded(root, refused)


def _archive_prefix(mapped: MappedFile, members: dict[str, zipfile.ZipInfo]) -> str:
    """``"archive/"``: the folder holding ``data.pkl`` (named after the file when saved)."""
    for name in members:
        if name.endswith("/data.pkl") and name.count("/") == 1:
            return name[: -len("data.pkl")]
    if "data.pkl" in members:
        return ""
    names = sorted(members)
    if not names:
        raise CheckpointFormatError(f"{mapped.path}: an empty zip archive, not a checkpoint")
    if all(n.endswith(".npy") for n in names):
        what = "a NumPy .npz archive"
    elif any(n.endswith(".safetensors") for n in names):
        what = "a zip holding safetensors files: unpack it first"
    else:
        what = "a zip archive but not a torch checkpoint"
    shown = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
    raise CheckpointFormatError(f"{mapped.path}: {what} (no data.pkl inside; it holds {shown})")


def _byteorder(zf: zipfile.ZipFile, members: dict[str, zipfile.ZipInfo], prefix: str) -> str:
    info = members.get(f"{prefix}byteorder")
    if info is None:
        return "little"  # files from torch < 1.10 have no record and are little-endian
    order = _read_member(zf, info, 16).decode("ascii", "replace").strip()  # "little" or "big"
    if order not in ("little", "big"):
        raise CheckpointFormatError(f"{zf.filename}: corrupt byteorder record {order!r:.20}")
    return order


def _read_pickle(zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> bytes:
    limit = _MAX_PICKLE_BYTES if info.compress_type == zipfile.ZIP_STORED else (
        _MAX_INFLATED_PICKLE_BYTES
    )
    return _read_member(zf, info, limit)


def _read_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, limit: int) -> bytes:
    """A small member's bytes, refused before reading when its declared size is over ``limit``
    (zipfile inflates up to the declared size, so this bounds the memory a bomb can take)."""
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        raise CheckpointFormatError(
            f"{zf.filename}: {info.filename!r:.80} is compressed with zip method "
            f"{info.compress_type}, which torch never writes: unzip the file and zip it again "
            "with `zip -0`, or re-save it with torch.save"
        )
    if info.file_size > limit:
        raise CheckpointFormatError(
            f"{zf.filename}: {info.filename!r:.80} claims {info.file_size:,} bytes (the limit is "
            f"{limit:,}): a corrupt or hostile archive (a zip bomb?)"
        )
    return zf.read(info)


def _member_storage(
    mapped: MappedFile,
    members: dict[str, zipfile.ZipInfo],
    prefix: str,
    record: StorageRecord,
    big_endian: bool,
) -> Storage:
    path = mapped.path
    info = members.get(f"{prefix}data/{record.key}")
    if info is None:
        raise CheckpointFormatError(
            f"{path}: corrupt: storage {record.key!r:.80} is missing from the archive"
        )
    if record.view is not None:
        raise CheckpointFormatError(f"{path}: corrupt: storage view records belong to old files")
    if info.compress_type != zipfile.ZIP_STORED:
        raise CheckpointFormatError(
            f"{path}: storage {record.key!r:.80} is compressed, which torch never writes (the file "
            "was re-zipped by another tool): unzip it and zip it again with `zip -0`, or re-save "
            "it with torch.save"
        )
    storage = Storage(
        mapped,
        record.key,
        record.dtype,
        record.numel,
        big_endian=big_endian,
        locate=lambda: _data_offset(mapped, info),
    )
    if storage.nbytes > info.file_size:
        raise CheckpointFormatError(
            f"{path}: corrupt: storage {record.key!r:.80} should hold {storage.nbytes:,} bytes but "
            f"its archive member has {info.file_size:,}"
        )
    # the exact offset needs the local header (read on first use); this bound needs nothing
    if info.header_offset + _LOCAL_HEADER.size + len(info.filename) + info.file_size > mapped.size:
        raise truncated(path, f"member {info.filename!r:.80} lies past the end of the file")
    return storage


def _data_offset(mapped: MappedFile, info: zipfile.ZipInfo) -> int:
    """Where a stored member's bytes start: after its local header, name and extra field."""
    start = info.header_offset
    header = mapped.map()[start : start + _LOCAL_HEADER.size]
    if len(header) < _LOCAL_HEADER.size:
        raise truncated(mapped.path, f"member {info.filename!r:.80} lies past the end of the file")
    signature, name_len, extra_len = _LOCAL_HEADER.unpack(header)
    if signature != b"PK\x03\x04":
        raise CheckpointFormatError(
            f"{mapped.path}: corrupt zip: bad header for {info.filename!r:.80}"
        )
    name_start = start + _LOCAL_HEADER.size
    if mapped.map()[name_start : name_start + name_len] != _raw_name(info):
        # zipfile makes the same check: two entries sharing bytes are a corrupt or crafted archive
        raise CheckpointFormatError(
            f"{mapped.path}: corrupt zip: the entry for {info.filename!r:.80} points at another "
            "member's header (overlapping entries)"
        )
    return name_start + name_len + extra_len


def _raw_name(info: zipfile.ZipInfo) -> bytes:
    """The member name as stored in the local header (UTF-8 when flagged, else cp437)."""
    return info.orig_filename.encode("utf-8" if info.flag_bits & 0x800 else "cp437")
