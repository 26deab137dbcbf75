"""Opening the input of a conversion: unwrap its container, recognise it, apply safe fixes.

Shared by ``convert`` and ``export``: a :class:`Source` holds the file's tensors lazily (memory
mapped, no bytes read yet), in the official layout when the file is a known MiDaS variant, with
every fix that got them there. The fixes are the doctor's safe ones, exactly as ``load`` applies
them (containers, prefixes, timm drifts, derived buffers a file lacks).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..doctor import FixRecord
from ..identification import Identification

__all__ = ["Source", "open_source", "file_sha256"]


@dataclass
class Source:
    """A conversion's input, ready to map.

    Attributes:
        path: the file read (``model.safetensors`` for a transformers folder).
        format: the reader's format name (``torch-zip``, ``torch-legacy``, ``safetensors``).
        tensors: the state dict, lazily: official keys when ``variant`` is known and the safe
            fixes make it load, else the file's own keys (container removed).
        variant: the MiDaS variant, or None when the file is not (a fixable form of) one.
        hf: True when the file is a transformers DPT checkpoint.
        steps: the fixes applied, in order.
        identification: how the file was recognised.
    """

    path: Path
    format: str
    tensors: dict[str, Any]
    variant: str | None
    hf: bool = False
    steps: list[FixRecord] = field(default_factory=list)
    identification: Identification | None = None

    @property
    def fixes(self) -> list[str]:
        """The applied fixes, one line each."""
        return [f"{step.fix}: {step.summary}" for step in self.steps]


@contextmanager
def open_source(
    path: str | os.PathLike[str], *, variant: str | None = None, to_official: bool = True
) -> Iterator[Source]:
    """Open ``path`` (a checkpoint file or a transformers folder) for conversion, through the
    same pipeline as :func:`midaskit.load` (:func:`midaskit.loading.prepare`), leniently: a file
    that is not a safely fixable MiDaS variant keeps its own keys (``variant`` None).

    Args:
        path: the input.
        variant: treat the file as this variant (it must be a fixable form of it).
        to_official: map a transformers checkpoint to the official layout (else keep its keys).

    Raises:
        IncompatibleCheckpointError: ``variant`` was given and the file is not a fixable form
            of it, or a transformers checkpoint fits no supported variant.
    """
    from ..loading import prepare

    prep = prepare(path, variant, lenient=True, to_official=to_official)
    name = prep.spec.name if prep.spec else None
    yield Source(prep.path, prep.format, prep.tensors, name, prep.hf, prep.steps,
                 prep.identification)


def file_sha256(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()
