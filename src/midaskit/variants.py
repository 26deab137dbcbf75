"""The registry of the 13 official MiDaS PyTorch variants, as data.

Each :class:`VariantSpec` says what builds the model (a builder path plus hooks and widths), what
preprocesses its input (from the official ``model_loader.py`` and the reference manifests), and
how the variant is known to users (official file names, torch.hub entry). Importing this module
does not import torch: identification runs on metadata only.
"""

from __future__ import annotations

import difflib
import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .errors import UnknownVariantError

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn

__all__ = [
    "Preprocess",
    "VariantSpec",
    "REGISTRY",
    "all_variants",
    "get_variant",
    "build_model",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HALF = (0.5, 0.5, 0.5)


@dataclass(frozen=True)
class Preprocess:
    """The official ``Resize -> NormalizeImage -> PrepareForNet`` settings of one variant.

    Attributes:
        net_w, net_h: the network's native input size.
        resize_mode: ``"minimal"`` (scale up to at least the net size) or ``"upper_bound"``
            (scale down to at most the net size), as in ``midas/transforms.py``.
        keep_aspect_ratio: False for the variants that only run square (Swin, SwinV2, LeViT).
        ensure_multiple_of: the resized sides are multiples of this.
        mean, std: per-channel normalisation of the RGB image in [0, 1].
    """

    net_w: int
    net_h: int
    resize_mode: str
    keep_aspect_ratio: bool
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    ensure_multiple_of: int = 32


@dataclass(frozen=True)
class VariantSpec:
    """Everything midaskit knows about one official variant.

    Attributes:
        name: the official file stem, e.g. ``"dpt_beit_large_512"``.
        version: MiDaS release, ``"2.1"``, ``"3.0"`` or ``"3.1"``.
        family: backbone family (``beit``, ``swin2``, ``swin``, ``next_vit``, ``levit``, ``vit``,
            ``hybrid``, ``resnext``, ``efficientnet``).
        backbone: the official backbone name (``model_loader.py`` / ``_make_encoder``).
        builder: ``"module:function"``; the function takes ``(spec, *, device, dtype)`` and
            returns the full depth model.
        hooks: the backbone blocks whose outputs feed the decoder (empty for v2.1 nets, which
            use stage outputs).
        in_widths: channels of the feature maps entering ``scratch.layer{i}_rn``.
        features: decoder width.
        head_features: ``(head_features_1, head_features_2)`` of ``scratch.output_conv``.
        preprocess: input transform settings.
        num_params: parameter count of the official model.
        hub_name: the torch.hub entry name in isl-org/MiDaS ``hubconf.py``.
        file_names: official release file names, the current one first, older names after.
        native_size_only: the official model runs only at its native square size.
    """

    name: str
    version: str
    family: str
    backbone: str
    builder: str
    hooks: tuple[int, ...]
    in_widths: tuple[int, ...]
    features: int
    head_features: tuple[int, int]
    preprocess: Preprocess
    num_params: int
    hub_name: str
    file_names: tuple[str, ...]
    native_size_only: bool = False

    @property
    def net_size(self) -> tuple[int, int]:
        """``(height, width)`` of the native input."""
        return (self.preprocess.net_h, self.preprocess.net_w)


def _dpt_pre(size: int, keep_aspect_ratio: bool = True) -> Preprocess:
    return Preprocess(size, size, "minimal", keep_aspect_ratio, HALF, HALF)


def _v21_pre(size: int) -> Preprocess:
    return Preprocess(size, size, "upper_bound", True, IMAGENET_MEAN, IMAGENET_STD)


_BB = "midaskit.models.backbones"

_SPECS = (
    VariantSpec(
        "dpt_beit_large_512", "3.1", "beit", "beitl16_512", f"{_BB}.beit:build_dpt_beit_large_512",
        (5, 11, 17, 23), (256, 512, 1024, 1024), 256, (256, 32), _dpt_pre(512),
        345_014_441, "DPT_BEiT_L_512", ("dpt_beit_large_512.pt",),
    ),
    VariantSpec(
        "dpt_beit_large_384", "3.1", "beit", "beitl16_384", f"{_BB}.beit:build_dpt_beit_large_384",
        (5, 11, 17, 23), (256, 512, 1024, 1024), 256, (256, 32), _dpt_pre(384),
        344_338_601, "DPT_BEiT_L_384", ("dpt_beit_large_384.pt",),
    ),
    VariantSpec(
        "dpt_beit_base_384", "3.1", "beit", "beitb16_384", f"{_BB}.beit:build_dpt_beit_base_384",
        (2, 5, 8, 11), (96, 192, 384, 768), 256, (256, 32), _dpt_pre(384),
        111_531_689, "DPT_BEiT_B_384", ("dpt_beit_base_384.pt",),
    ),
    VariantSpec(
        "dpt_swin2_large_384", "3.1", "swin2", "swin2l24_384",
        f"{_BB}.swin2:build_dpt_swin2_large_384",
        (1, 1, 17, 1), (192, 384, 768, 1536), 256, (256, 32), _dpt_pre(384, False),
        213_411_869, "DPT_SwinV2_L_384", ("dpt_swin2_large_384.pt",), native_size_only=True,
    ),
    VariantSpec(
        "dpt_swin2_base_384", "3.1", "swin2", "swin2b24_384",
        f"{_BB}.swin2:build_dpt_swin2_base_384",
        (1, 1, 17, 1), (128, 256, 512, 1024), 256, (256, 32), _dpt_pre(384, False),
        102_378_913, "DPT_SwinV2_B_384", ("dpt_swin2_base_384.pt",), native_size_only=True,
    ),
    VariantSpec(
        "dpt_swin2_tiny_256", "3.1", "swin2", "swin2t16_256",
        f"{_BB}.swin2:build_dpt_swin2_tiny_256",
        (1, 1, 5, 1), (96, 192, 384, 768), 256, (256, 32), _dpt_pre(256, False),
        41_701_331, "DPT_SwinV2_T_256", ("dpt_swin2_tiny_256.pt",), native_size_only=True,
    ),
    VariantSpec(
        "dpt_swin_large_384", "3.1", "swin", "swinl12_384", f"{_BB}.swin:build_dpt_swin_large_384",
        (1, 1, 17, 1), (192, 384, 768, 1536), 256, (256, 32), _dpt_pre(384, False),
        213_407_453, "DPT_Swin_L_384", ("dpt_swin_large_384.pt",), native_size_only=True,
    ),
    VariantSpec(
        "dpt_next_vit_large_384", "3.1", "next_vit", "next_vit_large_6m",
        f"{_BB}.next_vit:build_dpt_next_vit_large_384",
        (2, 6, 36, 39), (96, 256, 512, 1024), 256, (256, 32), _dpt_pre(384),
        72_260_713, "DPT_Next_ViT_L_384", ("dpt_next_vit_large_384.pt",),
    ),
    VariantSpec(
        "dpt_levit_224", "3.1", "levit", "levit_384", f"{_BB}.levit:build_dpt_levit_224",
        (3, 11, 21), (384, 512, 768), 256, (64, 8), _dpt_pre(224, False),
        50_630_837, "DPT_LeViT_224", ("dpt_levit_224.pt",), native_size_only=True,
    ),
    VariantSpec(
        "dpt_large_384", "3.0", "vit", "vitl16_384", f"{_BB}.vit:build_dpt_large_384",
        (5, 11, 17, 23), (256, 512, 1024, 1024), 256, (256, 32), _dpt_pre(384),
        344_055_465, "DPT_Large", ("dpt_large_384.pt", "dpt_large-midas-2f21e586.pt"),
    ),
    VariantSpec(
        "dpt_hybrid_384", "3.0", "hybrid", "vitb_rn50_384", f"{_BB}.hybrid:build_dpt_hybrid_384",
        (0, 1, 8, 11), (256, 512, 768, 768), 256, (256, 32), _dpt_pre(384),
        123_146_985, "DPT_Hybrid", ("dpt_hybrid_384.pt", "dpt_hybrid-midas-501f0c75.pt"),
    ),
    VariantSpec(
        "midas_v21_384", "2.1", "resnext", "resnext101_wsl",
        "midaskit.models.midas_net:build_midas_v21_384",
        (), (256, 512, 1024, 2048), 256, (256, 32), _v21_pre(384),
        105_362_945, "MiDaS", ("midas_v21_384.pt", "midas_v21-f6b98070.pt"),
    ),
    VariantSpec(
        "midas_v21_small_256", "2.1", "efficientnet", "efficientnet_lite3",
        "midaskit.models.midas_net_small:build_midas_v21_small_256",
        (), (32, 48, 136, 384), 64, (64, 32), _v21_pre(256),
        21_320_545, "MiDaS_small", ("midas_v21_small_256.pt", "midas_v21_small-70d6b9c8.pt"),
    ),
)


def _make_registry(specs: tuple[VariantSpec, ...]) -> dict[str, VariantSpec]:
    registry: dict[str, VariantSpec] = {}
    for spec in specs:
        if spec.name in registry:
            raise ValueError(f"duplicate variant name {spec.name!r} in the registry")
        registry[spec.name] = spec
    return registry


REGISTRY: dict[str, VariantSpec] = _make_registry(_SPECS)

# every name a user may type for a variant, lower-cased: stem, hub entry, release file names
_ALIASES: dict[str, str] = {}
for _spec in _SPECS:
    for _alias in (_spec.name, _spec.hub_name, *_spec.file_names):
        _ALIASES[_alias.lower()] = _spec.name
        _ALIASES[_alias.lower().removesuffix(".pt")] = _spec.name


def all_variants() -> list[VariantSpec]:
    """The 13 variants in registry order (newest and largest first)."""
    return list(REGISTRY.values())


def get_variant(name: str) -> VariantSpec:
    """Look a variant up by file stem, torch.hub name or release file name (any case).

    Raises:
        UnknownVariantError: with the closest known names.
    """
    key = name.strip().lower()
    if key in _ALIASES:
        return REGISTRY[_ALIASES[key]]
    close = difflib.get_close_matches(key, list(_ALIASES), n=3, cutoff=0.5)
    hint = ", ".join(sorted({_ALIASES[c] for c in close})) or ", ".join(REGISTRY)
    raise UnknownVariantError(f"unknown MiDaS variant {name!r}; did you mean: {hint}?")


def build_model(spec: VariantSpec | str, *, device=None, dtype=None) -> nn.Module:
    """Build the variant's depth model (random or uninitialised weights) in eval mode.

    Pass ``device="meta"`` to build without allocating memory, then load weights with
    ``load_state_dict(..., assign=True)``.
    """
    if isinstance(spec, str):
        spec = get_variant(spec)
    module_name, func_name = spec.builder.split(":")
    builder = getattr(importlib.import_module(module_name), func_name)
    return builder(spec, device=device, dtype=dtype).eval()
