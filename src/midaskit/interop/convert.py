"""File-level conversions between the official layout and transformers folders, each ending with
a check: transformers or midaskit loads the result strictly, and the depth of the converted model
is compared with the source model's on a seeded input at the native size."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import IncompatibleCheckpointError
from ..layouts import load_layout
from .hf import (
    HF_VARIANTS,
    HFCheck,
    check_hf_folder,
    compare_depth,
    load_hf_model,
    write_hf_folder,
)
from .keymap import materialize
from .source import Source, file_sha256, open_source

__all__ = ["CHECK_TOLERANCE_OVER_STD", "ConversionReport", "convert_to_hf", "convert_to_official"]

# a converted model's depth may differ from its source's by this fraction of the depth's std
CHECK_TOLERANCE_OVER_STD = 1e-3


@dataclass
class ConversionReport:
    """What a conversion wrote and how it was checked.

    Attributes:
        output: the written folder or file.
        variant: the MiDaS variant converted.
        fixes: fixes applied to the input, one line each.
        dropped: official keys the output has no place for (see ``DROPPED_OFFICIAL_KEYS``).
        check: loading report and depth difference, when checked.
    """

    output: Path
    variant: str
    fixes: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    check: HFCheck | None = None


def _require_variant(source: Source) -> str:
    if source.variant is None:
        what = source.identification.summary() if source.identification else "unrecognised"
        raise IncompatibleCheckpointError(f"{source.path.name}: {what}")
    return source.variant


def _judge(check: HFCheck, what: str) -> HFCheck:
    if not check.loads_cleanly:
        raise IncompatibleCheckpointError(
            f"{what}: transformers reports missing {check.missing[:3]}, unexpected "
            f"{check.unexpected[:3]}, wrong shape {check.mismatched[:3]}")
    err = check.max_abs_err_over_std
    if err is not None and not err < CHECK_TOLERANCE_OVER_STD:
        raise IncompatibleCheckpointError(
            f"{what}: the converted model's depth differs from the source's by {err:.2e} of its "
            f"std (tolerance {CHECK_TOLERANCE_OVER_STD:.0e})")
    return check


def convert_to_hf(
    src: str | os.PathLike[str],
    outdir: str | os.PathLike[str],
    *,
    variant: str | None = None,
    overwrite: bool = False,
    check: bool = True,
) -> ConversionReport:
    """Official-layout checkpoint -> transformers ``DPTForDepthEstimation`` folder.

    Raises:
        IncompatibleCheckpointError: not a MiDaS file, a variant transformers lacks, or the check
            failed.
        OutputExistsError: the folder's files exist and ``overwrite`` is False.
    """
    from ..loading import load

    with open_source(src, variant=variant) as source:
        if source.hf:
            raise IncompatibleCheckpointError(
                f"{src} is already a transformers checkpoint; use --to midas to convert it back")
        name = _require_variant(source)
        if name not in HF_VARIANTS:
            raise IncompatibleCheckpointError(
                f"transformers has no architecture for {name}; "
                f"it supports {', '.join(HF_VARIANTS)}")
        fixes = source.fixes
        metadata = {"source_file": source.path.name, "source_sha256": file_sha256(source.path),
                    "fixes": json.dumps(fixes)}
        out, dropped = write_hf_folder(source.tensors, name, outdir, overwrite=overwrite,
                                       metadata=metadata)
    report = ConversionReport(out, name, fixes, dropped)
    if check:
        reference = load(src, name).model
        report.check = _judge(check_hf_folder(out, reference, name), str(out))
    return report


def convert_to_official(
    src: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    variant: str | None = None,
    overwrite: bool = False,
    check: bool = True,
) -> ConversionReport:
    """Transformers folder (or its ``model.safetensors``), or any fixable MiDaS file -> a file in
    the official layout, complete with its derived buffers (``.safetensors`` suffix: safetensors,
    else a ``torch.save`` file).

    Raises:
        IncompatibleCheckpointError: the input fits no variant, or the check failed.
        OutputExistsError: ``out`` exists and ``overwrite`` is False, or ``out`` is the input.
    """
    from ..checkpoint import write_checkpoint
    from ..loading import load

    src = Path(src)
    with open_source(src, variant=variant) as source:
        name = _require_variant(source)
        tensors = _with_derived(source.tensors, name)
        fixes = source.fixes
        meta = {"format": "pt", "midaskit_variant": name, "source_file": source.path.name,
                "fixes": json.dumps(fixes)}
        write_checkpoint(tensors, out, metadata=meta, overwrite=overwrite, source=source.path)
        from_hf = source.hf
    report = ConversionReport(Path(out), name, fixes)
    if check:
        reference = load(out, name).model  # strict: every official key, right shapes
        if from_hf and (src if src.is_dir() else src.parent).joinpath("config.json").is_file():
            model, loading = load_hf_model(src if src.is_dir() else src.parent)
            report.check = _judge(compare_depth(model, reference, name, loading), str(out))
    return report


def _with_derived(tensors: dict[str, Any], variant: str) -> dict[str, Any]:
    """Materialised tensors in the official order, derived buffers computed where absent."""
    from ..models.derived import iter_derived_buffers
    from ..variants import build_model

    layout = load_layout(variant)
    missing = [k for k in layout.derived if k not in tensors]
    derived = {}
    if missing:
        model = build_model(variant, device="meta")
        derived = {k: v for k, _, _, v in iter_derived_buffers(model) if k in missing}
    out = {}
    for key, meta in layout.metas.items():
        if key in tensors:
            out[key] = materialize(tensors[key])
        elif key in derived:
            import torch

            out[key] = derived[key].to(getattr(torch, meta.dtype))
    return out
