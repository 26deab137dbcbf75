"""Writing a state dict: atomically, never over an existing file unasked, never over its source.

The doctor writes fixed checkpoints next to the user's files; a crash half way must not leave a
truncated ``.pt`` behind, and the input must survive even ``--overwrite``. We write to a temporary
file in the target folder and ``os.replace`` it into place.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import IO, TYPE_CHECKING, Literal

from midaskit.errors import MidaskitError, OutputExistsError

if TYPE_CHECKING:
    import torch

__all__ = ["write_checkpoint", "atomic_write"]

PathLike = str | os.PathLike[str]


def write_checkpoint(
    tensors: Mapping[str, torch.Tensor],
    path: str | os.PathLike[str],
    *,
    fmt: Literal["torch", "safetensors"] | None = None,
    metadata: dict[str, str] | None = None,
    overwrite: bool = False,
    source: PathLike | Iterable[PathLike] | None = None,
) -> Path:
    """Write ``tensors`` as a plain state dict.

    Args:
        tensors: ``{key: tensor}``; written in this order.
        path: the output file.
        fmt: ``"torch"`` (``torch.save`` of a plain dict, loadable with ``weights_only=True``) or
            ``"safetensors"``; ``None`` picks safetensors for a ``.safetensors`` suffix.
        metadata: string metadata, stored in the safetensors header (torch files have no place for
            it and ignore it).
        overwrite: replace an existing ``path``.
        source: the file(s) the tensors were read from (the checkpoint, a reference it was
            compared with); they are never replaced, even with ``overwrite``.

    Returns:
        The written path.

    Raises:
        OutputExistsError: ``path`` exists (and no ``overwrite``), is a folder, or is a ``source``.
        MidaskitError: the file cannot be written (missing folder, no permission, disk full);
            nothing is left behind.
    """
    import torch

    path = Path(path)
    fmt = fmt or ("safetensors" if path.suffix == ".safetensors" else "torch")
    if fmt not in ("torch", "safetensors"):
        raise MidaskitError(f"unknown checkpoint format {fmt!r}: use 'torch' or 'safetensors'")
    bad = [k for k, v in tensors.items() if type(k) is not str or not isinstance(v, torch.Tensor)]
    if bad:
        raise MidaskitError(f"write_checkpoint: entries that are not str -> tensor: {bad[:5]}")
    _check_target(path, overwrite, source)

    def save(fh: IO[bytes]) -> None:
        if fmt == "torch":
            torch.save(dict(tensors), fh)
        else:
            from safetensors.torch import save

            fh.write(save(_unshared(tensors), metadata=metadata))

    atomic_write(path, save)
    return path


def atomic_write(path: Path, write: Callable[[IO[bytes]], object]) -> None:
    """Call ``write`` on a temporary file in ``path``'s folder, then rename it to ``path``.

    The data is flushed to disk before the rename, so ``path`` is either its old self or the
    whole new file, even after a crash; on any failure the temporary file is removed. The file
    gets mode 0644 (``mkstemp`` creates 0600).

    Raises:
        MidaskitError: an ``OSError`` while writing (the message names ``path`` and the cause).
    """
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise _cannot_write(path, exc) from exc
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise _cannot_write(path, exc) from exc
        raise


def _cannot_write(path: Path, exc: OSError) -> MidaskitError:
    return MidaskitError(f"{path}: cannot write it ({exc.strerror or exc})")


def _check_target(
    path: Path, overwrite: bool, source: PathLike | Iterable[PathLike] | None
) -> None:
    if path.is_dir():
        raise OutputExistsError(f"{path} is a directory; give a file name to write to")
    if not path.exists():
        return
    sources = [source] if isinstance(source, str | os.PathLike) else list(source or ())
    if any(Path(s).exists() and os.path.samefile(path, s) for s in sources):
        raise OutputExistsError(
            f"{path} is a checkpoint being read; refusing to replace it, write to a new file"
        )
    if not overwrite:
        raise OutputExistsError(f"{path} exists; pass --overwrite (overwrite=True) to replace it")


def _unshared(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Contiguous tensors with no shared memory, as safetensors requires (tied weights copied)."""
    out, seen = {}, set()
    for key, tensor in tensors.items():
        tensor = tensor.detach().cpu()
        storage = tensor.untyped_storage().data_ptr() if tensor.numel() else None
        if storage in seen or not tensor.is_contiguous():
            tensor = tensor.contiguous().clone()
        elif storage is not None and tensor.nbytes != tensor.untyped_storage().nbytes():
            tensor = tensor.clone()  # a view of a bigger storage would write all of it
        if storage is not None:
            seen.add(storage)
        out[key] = tensor
    return out
