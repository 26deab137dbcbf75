"""The reading entry points: open a checkpoint, read its state dict's layout, or load its tensors.

``open_checkpoint`` and ``read_state_dict_meta`` never import torch and never run code from the
file; ``load_tensors`` imports torch to hand back tensors over the file's memory map.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from midaskit.errors import MidaskitError

from .formats import sniff
from .lazy import MappedFile
from .safe_pickle import unsafe_error
from .safetensors_format import load_safetensors
from .torch_legacy import load_torch_legacy
from .torch_zip import load_torch_zip
from .types import Checkpoint, FormatName, Loaded, Mode, TensorMeta
from .unwrap import find_state_dict

if TYPE_CHECKING:
    import torch

__all__ = ["open_checkpoint", "read_state_dict_meta", "load_tensors"]

_READERS: dict[FormatName, Callable[[MappedFile], Loaded]] = {
    "torch-zip": load_torch_zip,
    "torch-legacy": load_torch_legacy,
    "safetensors": load_safetensors,
}


def open_checkpoint(path: str | os.PathLike[str], *, mode: Mode = "strict") -> Checkpoint:
    """Open a torch (zip or legacy) or safetensors checkpoint without reading its tensor bytes.

    Args:
        path: the checkpoint file.
        mode: ``"strict"`` refuses a pickle naming anything but tensor data; ``"inspect"`` turns
            each such global into an inert ``Placeholder`` and lists it in ``unsafe_globals``.

    Raises:
        CheckpointFormatError: not a readable checkpoint; the message names the likely cause.
        UnsafeCheckpointError: strict mode and the pickle names other globals (all listed).
    """
    if mode not in ("strict", "inspect"):
        raise MidaskitError(f"mode must be 'strict' or 'inspect', not {mode!r}")
    path = Path(path)
    fmt = sniff(path)
    mapped = MappedFile(path)
    try:
        loaded = _READERS[fmt](mapped)
        if loaded.refused and mode == "strict":
            raise unsafe_error(str(path), loaded.refused)
    except BaseException:
        mapped.close()
        raise
    return Checkpoint(
        path=path,
        format=fmt,
        root=loaded.root,
        unsafe_globals=loaded.refused,
        metadata=loaded.metadata or {},
        file_size=mapped.size,
        _file=mapped,
    )


def read_state_dict_meta(
    path: str | os.PathLike[str], *, mode: Mode = "strict"
) -> dict[str, TensorMeta]:
    """``{key: TensorMeta}`` of the state dict inside ``path``: shapes without bytes, no torch."""
    with open_checkpoint(path, mode=mode) as ckpt:
        found = find_state_dict(ckpt.root, source=str(ckpt.path))
        return {key: tensor.meta for key, tensor in found.tensors.items()}


def load_tensors(path: str | os.PathLike[str], *, mode: Mode = "strict") -> dict[str, torch.Tensor]:
    """The state dict's tensors, on CPU, memory-mapped from the file (copy-on-write).

    Tensors that shared a storage in the file share memory here. The file stays mapped while any
    of them is alive.
    """
    with open_checkpoint(path, mode=mode) as ckpt:
        found = find_state_dict(ckpt.root, source=str(ckpt.path))
        return {key: tensor.materialize() for key, tensor in found.tensors.items()}
