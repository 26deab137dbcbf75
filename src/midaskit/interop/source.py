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

from ..doctor import FixRecord, Unwrap, Verdict, apply_fixes, diagnose, variant_target
from ..doctor.fixes import meta_of
from ..identification import Identification, identify_metas
from ..variants import get_variant
from .hf import hf_to_official, hf_weights_file, is_hf_layout, read_hf_config

__all__ = ["Source", "open_source", "file_sha256"]

_LOADABLE = (Verdict.LOADS_AS_IS, Verdict.LOADS_AFTER_SAFE_FIXES)


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
    """Open ``path`` (a checkpoint file or a transformers folder) for conversion.

    Args:
        path: the input.
        variant: treat the file as this variant (it must be a fixable form of it).
        to_official: map a transformers checkpoint to the official layout (else keep its keys).

    The tensors stay valid inside the ``with`` block only (they read from the file's map).

    Raises:
        IncompatibleCheckpointError: ``variant`` was given and the file is not a fixable form
            of it, or a transformers checkpoint fits no supported variant.
    """
    from ..checkpoint import find_state_dict, open_checkpoint
    from ..errors import IncompatibleCheckpointError

    path = Path(path)
    weights = hf_weights_file(path) if path.is_dir() else path
    with open_checkpoint(weights, mode="strict") as ckpt:
        found = find_state_dict(ckpt.root, source=str(weights))
        tensors: dict[str, Any] = dict(found.tensors)
        steps = [Unwrap(found.path).apply(ckpt.root)[1]] if found.path else []
        if is_hf_layout(tensors):
            name = None
            if to_official:
                name, tensors = hf_to_official(tensors, read_hf_config(path))
                steps.append(FixRecord(
                    "FromTransformers", f"mapped {len(tensors)} keys to the official {name} "
                    "layout (q/k/v re-fused, the classifier parts transformers lacks filled "
                    "neutrally)", "the file is a transformers DPTForDepthEstimation", True))
            yield Source(weights, ckpt.format, tensors, name, True, steps)
            return
        ident = identify_metas({k: meta_of(v) for k, v in tensors.items()})
        name = get_variant(variant).name if variant else ident.variant
        if name is not None:
            report = diagnose(found.tensors, variant_target(name), unwrapped=found,
                              name=weights.name)
            if report.verdict in _LOADABLE:
                tensors, steps = apply_fixes(ckpt.root if found.path else found.tensors,
                                             report.safe_fixes)
            elif variant is not None:
                raise IncompatibleCheckpointError(f"{weights.name}: {report.summary()}", report)
            else:
                name = None  # recognised, but not safely fixable: keep the keys as they are
        yield Source(weights, ckpt.format, tensors, name, False, steps, ident)


def file_sha256(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()
