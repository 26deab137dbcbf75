"""Writing a state dict: atomically, never over an existing file unasked, never over its source.

The doctor writes fixed checkpoints next to the user's files; a crash half way must not leave a
truncated ``.pt`` behind, and the input must survive even ``--overwrite``. We write to a temporary
file in the target folder and ``os.replace`` it into place.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from midaskit.errors import MidaskitError, OutputExistsError

if TYPE_CHECKING:
    import torch

__all__ = ["write_checkpoint"]


def write_checkpoint(
    tensors: Mapping[str, torch.Tensor],
    path: str | os.PathLike[str],
    *,
    fmt: Literal["torch", "safetensors"] | None = None,
    metadata: dict[str, str] | None = None,
    overwrite: bool = False,
    source: str | os.PathLike[str] | None = None,
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
        source: the file the tensors were read from; it is never replaced, even with ``overwrite``.

    Returns:
        The written path.

    Raises:
        OutputExistsError: ``path`` exists (and no ``overwrite``), is a folder, or is ``source``.
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

    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as fh:
            if fmt == "torch":
                torch.save(dict(tensors), fh)
            else:
                from safetensors.torch import save

                fh.write(save(_unshared(tensors), metadata=metadata))
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def _check_target(path: Path, overwrite: bool, source: str | os.PathLike[str] | None) -> None:
    if path.is_dir():
        raise OutputExistsError(f"{path} is a directory; give a file name to write to")
    if not path.exists():
        return
    if source is not None and Path(source).exists() and os.path.samefile(path, source):
        raise OutputExistsError(
            f"{path} is the checkpoint being read; refusing to replace it, write to a new file"
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
