"""Any readable checkpoint -> a plain safetensors file, with the fixes recorded in its metadata.

The container is removed, prefixes and known drifts are undone (when the file is a MiDaS
variant), shared tensors are written once each (safetensors has no shared storage), and the
header's ``__metadata__`` says where the tensors came from: the source file's name and SHA-256,
the variant, and every fix applied. The input file is never modified.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import IncompatibleCheckpointError
from .keymap import materialize
from .source import file_sha256, open_source

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = ["SafetensorsReport", "convert_to_safetensors", "same_bytes"]


@dataclass
class SafetensorsReport:
    """What :func:`convert_to_safetensors` wrote.

    Attributes:
        output: the written file.
        variant: the identified MiDaS variant, or None.
        tensors: number of tensors written.
        fixes: the fixes applied, one line each.
        metadata: the safetensors header metadata written.
        verified: every tensor was re-read from the output and found equal to the source.
    """

    output: Path
    variant: str | None
    tensors: int
    fixes: list[str] = field(default_factory=list)
    metadata: dict[str, str] = field(default_factory=dict)
    verified: bool = False


def convert_to_safetensors(
    src: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    variant: str | None = None,
    overwrite: bool = False,
    verify: bool = True,
) -> SafetensorsReport:
    """Write the state dict of ``src`` to ``out`` as safetensors.

    Args:
        src: any checkpoint the safe reader accepts (torch zip or legacy, safetensors, or a
            transformers folder, which is written in its own layout).
        out: the output file; written atomically.
        variant: force this variant instead of identifying the file.
        overwrite: replace an existing ``out``.
        verify: re-read the written file and compare every tensor with the source.

    Raises:
        OutputExistsError: ``out`` exists (without ``overwrite``) or is the input file.
        IncompatibleCheckpointError: the re-read output differs from the source.
    """
    from .. import __version__
    from ..checkpoint import write_checkpoint

    src_path = Path(src)
    with open_source(src_path, variant=variant, to_official=False) as source:
        fixes = source.fixes
        metadata = {
            "format": "pt",
            "producer": f"midaskit {__version__}",
            "source_file": source.path.name,
            "source_sha256": file_sha256(source.path),
            "source_format": source.format,
            "fixes": json.dumps(fixes),
        }
        if source.variant:
            metadata["midaskit_variant"] = source.variant
        tensors = {key: materialize(value) for key, value in source.tensors.items()}
        write_checkpoint(tensors, out, fmt="safetensors", metadata=metadata,
                         overwrite=overwrite, source=source.path)
        report = SafetensorsReport(Path(out), source.variant, len(tensors), fixes, metadata)
        if verify:
            _verify(Path(out), tensors)
            report.verified = True
    return report


def _verify(out: Path, expected: dict) -> None:
    """Re-read ``out`` and require every tensor to equal its source, bit for bit."""
    from ..checkpoint import load_tensors

    written = load_tensors(out)
    if set(written) != set(expected):
        raise IncompatibleCheckpointError(f"{out}: the written keys differ from the source's")
    bad = [k for k, t in expected.items() if not same_bytes(written[k], t)]
    if bad:
        raise IncompatibleCheckpointError(f"{out}: {len(bad)} tensors differ after writing: "
                                          f"{', '.join(bad[:5])}")


def same_bytes(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Same dtype, shape and bytes (NaNs included, unlike ``torch.equal``)."""
    import torch

    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    return torch.equal(a.contiguous().reshape(-1).view(torch.uint8),
                       b.contiguous().reshape(-1).view(torch.uint8))
