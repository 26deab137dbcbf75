"""Which format a file is in, and for files that are no checkpoint, the likely reason in one line.

Most "cannot load" reports are not checkpoint problems at all: a Git LFS pointer committed in place
of the weights, an HTML login page saved as ``model.pt``, a download that stopped half way. We look
at the name and the first bytes and say so, instead of letting a pickle error surface.
"""

from __future__ import annotations

import re
import struct
from pathlib import Path

from midaskit.errors import CheckpointFormatError

from .types import FormatName

__all__ = ["sniff", "LEGACY_MAGIC", "PARTIAL_SUFFIXES", "truncated", "exception_text"]

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C  # first pickle of every pre-1.6 torch.save file
_LEGACY_HEAD = b"\x80\x02\x8a\x0a" + LEGACY_MAGIC.to_bytes(10, "little")
PARTIAL_SUFFIXES = {
    ".incomplete": "Hugging Face hub",
    ".part": "browser or wget",
    ".partial": "browser",
    ".crdownload": "Chrome",
}
_HEAD_BYTES = 4096


def truncated(path: Path, what: str) -> CheckpointFormatError:
    """The error for a file that ends too early."""
    return CheckpointFormatError(
        f"{path}: truncated: {what}; the download was probably interrupted (or the copy "
        "failed): download it again"
    )


def exception_text(exc: BaseException) -> str:
    """A library exception's message fit for our one-line errors: zipfile and pickle quote the
    file's bytes in theirs (a whole header, an INT opcode's line), newlines included."""
    text = " ".join(str(exc).split())
    return text if len(text) <= 200 else text[:197] + "..."


def sniff(path: Path) -> FormatName:
    """The checkpoint format of ``path`` from its name and first bytes.

    Raises:
        CheckpointFormatError: the path is missing, a directory, an unfinished download, empty, or
            its content is something else (LFS pointer, HTML, plain pickle, ...), named in one line.
    """
    if not path.exists():
        raise CheckpointFormatError(f"{path}: no such file")
    if path.is_dir():
        raise CheckpointFormatError(_directory_message(path))
    size = path.stat().st_size
    if path.suffix.lower() in PARTIAL_SUFFIXES:
        raise CheckpointFormatError(
            f"{path}: an unfinished download ({path.suffix} files are written by "
            f"{PARTIAL_SUFFIXES[path.suffix.lower()]} while downloading, {size} bytes so far): "
            "wait for it to finish or download it again"
        )
    if size == 0:
        raise CheckpointFormatError(f"{path}: empty file (0 bytes): the download or copy failed")
    try:
        with open(path, "rb") as fh:
            head = fh.read(_HEAD_BYTES)
    except OSError as exc:
        raise CheckpointFormatError(f"{path}: cannot be read ({exc.strerror})") from None
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        return "torch-zip"
    if head.startswith(_LEGACY_HEAD):
        return "torch-legacy"
    if _looks_like_safetensors(head):
        return "safetensors"
    raise CheckpointFormatError(f"{path}: {_describe_other(head, size)}")


def _looks_like_safetensors(head: bytes) -> bool:
    if len(head) < 9:
        return False
    (header_len,) = struct.unpack("<Q", head[:8])
    # eight bytes of text read as a length are > 2**60; a real header is far below 2**32
    return head[8:9] == b"{" and 2 <= header_len < 2**32


def _directory_message(path: Path) -> str:
    if (path / "data.pkl").exists():
        return (
            f"{path} is an unzipped torch checkpoint folder: pass the original .pt file, or zip "
            "the folder again without compression (zip -0 -r)"
        )
    weights = (".pt", ".pth", ".ckpt", ".bin", ".safetensors")
    found = sorted(p.name for p in path.iterdir() if p.suffix in weights)
    hint = f" (it holds {', '.join(found[:5])})" if found else ""
    return f"{path} is a directory, not a checkpoint file{hint}"


def _describe_other(head: bytes, size: int) -> str:
    """One line naming what a non-checkpoint file most likely is."""
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if text.startswith(b"version https://git-lfs"):
        match = re.search(rb"size (\d+)", head)
        real = f" (the real file is {int(match.group(1)):,} bytes)" if match else ""
        return (
            f"a Git LFS pointer ({size} bytes), not the weights{real}: run `git lfs pull` in "
            "the repository (or download the file itself, not the pointer)"
        )
    if text.startswith((b"<!doctype html", b"<html", b"<head", b"<?xml", b"<body")):
        return (
            "an HTML page, not a checkpoint: the download saved an error or login page; check "
            "the URL (and access token) and download again"
        )
    if text.startswith((b"{", b"[")) and _is_text(head):
        return (
            "a JSON document, not a checkpoint (probably an error response from the server, e.g. "
            f"{head[:80].decode('utf-8', 'replace')!r}); check the URL and download again"
        )
    if head.startswith(b"\x80") and len(head) > 1 and 2 <= head[1] <= 5:
        return (
            "a plain Python pickle, not a torch checkpoint (torch.save writes a zip archive); "
            "it was written by pickle.dump or by a tool other than torch.save"
        )
    if len(head) > 262 and head[257:262] == b"ustar":
        return "a tar archive: the pre-0.1.10 torch format, or an archive to unpack first"
    known = {
        b"\x1f\x8b": "gzip-compressed: decompress it first (gunzip)",
        b"\x93NUMPY": "a NumPy .npy array, not a checkpoint",
        b"\x89HDF": "an HDF5 file (Keras/TensorFlow weights), not a PyTorch checkpoint",
        b"\xfd7zXZ": "xz-compressed: decompress it first (unxz)",
        b"7z\xbc\xaf": "a 7-Zip archive: unpack it first",
    }
    for magic, what in known.items():
        if head.startswith(magic):
            return what
    if _is_text(head):
        first = head.splitlines()[0][:60].decode("utf-8", "replace") if head.strip() else ""
        return f"a text file, not a checkpoint (it starts with {first!r})"
    return (
        f"not a torch or safetensors checkpoint (it starts with bytes {head[:8].hex(' ')}): "
        "the file is corrupt or in another format"
    )


def _is_text(head: bytes) -> bool:
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < len(head) - 4:  # a multi-byte character cut at the end is still text
            return False
    return all(b >= 32 or b in b"\t\r\n\f" for b in head[:512])
