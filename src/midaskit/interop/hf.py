"""Official MiDaS checkpoints <-> transformers ``DPTForDepthEstimation`` folders.

The key mapping is the data of :mod:`midaskit.interop.hf_tables`; this module applies it both
ways, builds the folder (``config.json``, ``model.safetensors``, ``preprocessor_config.json``),
and checks a written folder the way transformers itself loads it. Only the functions that touch
a transformers model import transformers (``pip install 'midaskit[hf]'``).

For ``identify``/``load``: :func:`is_hf_layout` tells a hub-layout key set apart, and
:func:`hf_to_official` maps its (lazy) tensors to the official layout without reading the bytes
of renamed keys; only the re-fused q/k/v rows are computed, when materialised.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import IncompatibleCheckpointError, OutputExistsError
from ..layouts import load_layout
from ..variants import get_variant
from .deps import require
from .hf_tables import (
    DROPPED_HF_KEYS,
    DROPPED_OFFICIAL_KEYS,
    FAMILY_OF,
    HF_CONFIGS,
    HF_VARIANTS,
    RULES,
)
from .keymap import ComputedTensor, apply_rules, meta_of

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = [
    "HF_VARIANTS",
    "HFCheck",
    "is_hf_layout",
    "hf_family",
    "official_to_hf",
    "hf_to_official",
    "hf_config",
    "preprocessor_config",
    "write_hf_folder",
    "read_hf_config",
    "hf_weights_file",
    "load_hf_model",
    "compare_depth",
    "check_hf_folder",
]

HF_FILES = ("config.json", "model.safetensors", "preprocessor_config.json")

# (key prefix, family): the first family whose prefix a key set has wins
_FAMILY_PREFIXES: tuple[tuple[str, str], ...] = (
    ("dpt.embeddings.backbone.bit.", "hybrid"),
    ("dpt.encoder.layer.", "vit"),
    ("backbone.encoder.layer.", "beit"),
    ("backbone.encoder.layers.", "swin2"),
)
_HF_ROOTS = ("neck.fusion_stage.layers.", "head.head.")


def is_hf_layout(keys: Iterable[str]) -> bool:
    """True for the key set of a transformers ``DPTForDepthEstimation`` (hub layout)."""
    keys = list(keys)
    return all(any(k.startswith(root) for k in keys) for root in _HF_ROOTS) and (
        hf_family(keys) is not None
    )


def hf_family(keys: Iterable[str]) -> str | None:
    """The backbone family (``vit``, ``hybrid``, ``beit``, ``swin2``) of hub-layout keys."""
    keys = list(keys)
    for prefix, family in _FAMILY_PREFIXES:
        if any(k.startswith(prefix) for k in keys):
            return family
    return None


def _supported(variant: str) -> str:
    name = get_variant(variant).name
    if name not in HF_CONFIGS:
        raise IncompatibleCheckpointError(
            f"transformers has no DPT architecture for {name}; supported: {', '.join(HF_VARIANTS)}"
        )
    return name


def official_to_hf(tensors: Mapping[str, Any], variant: str) -> tuple[dict[str, Any], list[str]]:
    """Map official-layout tensors of ``variant`` to the hub layout.

    Args:
        tensors: official keys (prefixes and drifts already undone) to lazy or torch tensors.
        variant: one of :data:`HF_VARIANTS`.

    Returns:
        ``(hub-layout values, dropped official keys)``; renamed values are the input objects.

    Raises:
        IncompatibleCheckpointError: the variant has no transformers architecture.
        KeyMapError: keys the table does not account for.
    """
    name = _supported(variant)
    return apply_rules(tensors, RULES[FAMILY_OF[name]], DROPPED_OFFICIAL_KEYS)


def _refill(key: str, shape: tuple[int, ...], dtype: str) -> ComputedTensor | None:
    """The neutral value of an official key the hub layout does not hold (None if derived)."""
    rule = next((d for d in DROPPED_OFFICIAL_KEYS if d.matches(key)), None)
    if rule is None or rule.refill not in ("zeros", "ones"):
        return None

    def make() -> torch.Tensor:
        import torch

        fill = torch.ones if rule.refill == "ones" else torch.zeros
        return fill(shape, dtype=getattr(torch, dtype))

    return ComputedTensor(shape, dtype, (), make)


def hf_to_official(
    tensors: Mapping[str, Any], config: Mapping[str, Any] | None = None
) -> tuple[str, dict[str, Any]]:
    """Map hub-layout tensors to the official layout of the variant they are.

    Renamed keys keep their (lazy) values; q/k/v are re-fused lazily; official keys the hub
    layout lacks get neutral values (classifier head zeros, unused norms ones/zeros, see
    ``DROPPED_OFFICIAL_KEYS``); derived buffers are left out (the loader regenerates them).

    Args:
        tensors: hub-layout keys to ``LazyTensor``/``torch.Tensor`` values.
        config: the folder's ``config.json``, if any: checked to describe a DPT depth model.

    Returns:
        ``(variant name, official-layout values in the official order)``.

    Raises:
        IncompatibleCheckpointError: not a DPT depth model, or no supported variant fits.
        KeyMapError: keys the table does not account for.
    """
    from ..identification import identify_metas

    family = hf_family(tensors)
    if family is None or not is_hf_layout(tensors):
        raise IncompatibleCheckpointError(
            "not a transformers DPTForDepthEstimation state dict (no neck/head/backbone keys)"
        )
    _check_config(config, family)
    mapped, _ = apply_rules(tensors, RULES[family], DROPPED_HF_KEYS, reverse=True)
    metas = {k: meta_of(v) for k, v in mapped.items()}
    ranked = [c for c in identify_metas(metas).candidates if FAMILY_OF.get(c.variant) == family]
    if not ranked or ranked[0].mismatched or ranked[0].unexpected:
        best = f" (closest: {ranked[0].variant})" if ranked else ""
        raise IncompatibleCheckpointError(
            f"the {family} weights fit no MiDaS variant transformers supports{best}"
        )
    variant = ranked[0].variant
    layout = load_layout(variant)
    official: dict[str, Any] = {}
    missing = []
    for key, meta in layout.metas.items():
        if key in mapped:
            official[key] = mapped[key]
        elif key not in layout.derived:
            value = _refill(key, meta.shape, meta.dtype)
            if value is None:
                missing.append(key)
            else:
                official[key] = value
    if missing:
        raise IncompatibleCheckpointError(
            f"the {family} weights lack {len(missing)} entries of {variant}: "
            f"{', '.join(missing[:5])}"
        )
    return variant, official


def _check_config(config: Mapping[str, Any] | None, family: str) -> None:
    if config is None:
        return
    if config.get("model_type") != "dpt":
        raise IncompatibleCheckpointError(
            f"config.json describes a {config.get('model_type')!r} model, not a DPT one"
        )
    backbone = (config.get("backbone_config") or {}).get("model_type")
    expected = {"hybrid": "bit", "beit": "beit", "swin2": "swinv2"}.get(family)
    if backbone is not None and expected is not None and backbone != expected:
        raise IncompatibleCheckpointError(
            f"config.json names a {backbone} backbone but the weights are {expected}"
        )


def hf_config(variant: str) -> dict[str, Any]:
    """The ``config.json`` content for ``variant`` (a fresh copy)."""
    return copy.deepcopy(HF_CONFIGS[_supported(variant)])


def preprocessor_config(variant: str) -> dict[str, Any]:
    """A ``DPTImageProcessor`` config reproducing the official input transform of ``variant``."""
    pre = get_variant(variant).preprocess
    return {
        "image_processor_type": "DPTImageProcessor",
        "do_resize": True,
        "size": {"height": pre.net_h, "width": pre.net_w},
        "keep_aspect_ratio": pre.keep_aspect_ratio,
        "ensure_multiple_of": pre.ensure_multiple_of,
        "resample": 3,  # bicubic, as the official cv2.INTER_CUBIC resize
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": list(pre.mean),
        "image_std": list(pre.std),
        "do_pad": False,
    }


def _write_text(path: Path, text: str) -> None:
    from ..checkpoint.write import atomic_write

    atomic_write(path, lambda fh: fh.write(text.encode()))


def write_hf_folder(
    official: Mapping[str, Any],
    variant: str,
    outdir: str | os.PathLike[str],
    *,
    overwrite: bool = False,
    metadata: Mapping[str, str] | None = None,
) -> tuple[Path, list[str]]:
    """Write ``official`` (official-layout values of ``variant``) as a transformers folder.

    Each file is written atomically; existing files are replaced only with ``overwrite``.

    Returns:
        ``(outdir, dropped official keys)``.

    Raises:
        OutputExistsError: a file of the folder exists and ``overwrite`` is False.
    """
    from ..checkpoint.write import write_checkpoint
    from .keymap import materialize

    outdir = Path(outdir)
    if outdir.exists() and not outdir.is_dir():
        raise OutputExistsError(f"{outdir} is a file; give a folder to write the model to")
    existing = [f for f in HF_FILES if (outdir / f).exists()]
    if existing and not overwrite:
        raise OutputExistsError(
            f"{outdir} already holds {', '.join(existing)}; pass --overwrite to replace them"
        )
    hf, dropped = official_to_hf(official, variant)
    outdir.mkdir(parents=True, exist_ok=True)
    meta = {"format": "pt", "midaskit_variant": get_variant(variant).name, **(metadata or {})}
    write_checkpoint({k: materialize(v) for k, v in hf.items()}, outdir / "model.safetensors",
                     fmt="safetensors", metadata=meta, overwrite=True)
    _write_text(outdir / "config.json", json.dumps(hf_config(variant), indent=2) + "\n")
    _write_text(outdir / "preprocessor_config.json",
                json.dumps(preprocessor_config(variant), indent=2) + "\n")
    return outdir, dropped


def hf_weights_file(path: str | os.PathLike[str]) -> Path:
    """The ``model.safetensors`` of a transformers folder (or the file itself)."""
    path = Path(path)
    weights = path / "model.safetensors" if path.is_dir() else path
    if not weights.is_file():
        raise IncompatibleCheckpointError(
            f"{path}: no model.safetensors (sharded or .bin folders: re-save with "
            "save_pretrained(..., safe_serialization=True, max_shard_size='100GB'))"
        )
    return weights


def read_hf_config(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The ``config.json`` of a folder, or beside a ``model.safetensors`` file; None if absent."""
    path = Path(path)
    config = (path if path.is_dir() else path.parent) / "config.json"
    return json.loads(config.read_text()) if config.is_file() else None


@dataclass
class HFCheck:
    """How transformers loads a written folder, and how its depth compares with midaskit's.

    Attributes:
        missing, unexpected, mismatched: transformers' loading report (all empty when right).
        max_abs_err_over_std: ``max|hf - midaskit| / std(midaskit)`` on the check input.
        input_shape: the check input's shape.
    """

    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)
    max_abs_err_over_std: float | None = None
    input_shape: tuple[int, ...] = ()

    @property
    def loads_cleanly(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)


def load_hf_model(folder: str | os.PathLike[str]) -> tuple[Any, HFCheck]:
    """``DPTForDepthEstimation.from_pretrained(folder)`` in eval mode, with its loading report."""
    transformers = require("transformers", "hf")
    logging = transformers.utils.logging
    bar = logging.is_progress_bar_enabled()
    logging.disable_progress_bar()  # a bar per load is noise on a converter's stderr
    try:
        model, info = transformers.DPTForDepthEstimation.from_pretrained(
            str(folder), output_loading_info=True
        )
    finally:
        if bar:
            logging.enable_progress_bar()
    check = HFCheck(
        missing=sorted(info.get("missing_keys", [])),
        unexpected=sorted(info.get("unexpected_keys", [])),
        mismatched=sorted(str(k[0]) if isinstance(k, tuple) else str(k)
                          for k in info.get("mismatched_keys", [])),
    )
    return model.eval(), check


def compare_depth(
    hf_model: Any, reference: Any, variant: str, check: HFCheck, *,
    pixel_values: torch.Tensor | None = None,
) -> HFCheck:
    """Fill ``check`` with ``max|hf - reference| / std(reference)`` of the predicted depth.

    Args:
        hf_model: a transformers ``DPTForDepthEstimation``.
        reference: a midaskit model, ``(B, 3, H, W) -> (B, H, W)``.
        variant: gives the native size of the default input.
        check: the loading report to complete.
        pixel_values: the input; default a seeded normal image ``(1, 3, H, W)``.
    """
    import torch

    if pixel_values is None:
        h, w = get_variant(variant).net_size
        pixel_values = torch.randn(1, 3, h, w, generator=torch.Generator().manual_seed(0))
    hf_model = hf_model.float()  # an fp16 folder loads as fp16: compare in float32
    with torch.inference_mode():
        ours = reference(pixel_values).float()
        theirs = hf_model(pixel_values=pixel_values).predicted_depth.float()
    check.max_abs_err_over_std = float((theirs - ours).abs().max() / ours.std())
    check.input_shape = tuple(pixel_values.shape)
    return check


def check_hf_folder(
    folder: str | os.PathLike[str], reference: Any, variant: str, *,
    pixel_values: torch.Tensor | None = None,
) -> HFCheck:
    """Load ``folder`` with transformers and compare its depth with ``reference``'s."""
    model, check = load_hf_model(folder)
    return compare_depth(model, reference, variant, check, pixel_values=pixel_values)
