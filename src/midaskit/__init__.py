"""midaskit: load any MiDaS checkpoint, explain why a checkpoint does not fit a model, predict
depth.

The heavy parts (torch, OpenCV, numpy) are imported on first use, so ``import midaskit`` and the
metadata-only paths (``identify``, ``inspect``) stay fast.
"""

from __future__ import annotations

import importlib
from typing import Any

from .errors import (
    CheckpointFormatError,
    ImageReadError,
    IncompatibleCheckpointError,
    MidaskitError,
    OutputExistsError,
    UnknownVariantError,
    UnsafeCheckpointError,
    UnsupportedInputSizeError,
)
from .variants import REGISTRY, VariantSpec, all_variants, build_model, get_variant

__version__ = "0.1.0"

# public name -> module that defines it, imported on first access
_LAZY = {
    "identify": "identification",
    "Identification": "identification",
    "load": "loading",
    "LoadedModel": "loading",
    "predict": "prediction",
    "predict_arrays": "prediction",
    "read_image": "preprocess",
    "Transform": "preprocess",
    "open_checkpoint": "checkpoint",
    "read_state_dict_meta": "checkpoint",
    "diagnose": "doctor",
}

__all__ = [
    "__version__",
    "MidaskitError",
    "CheckpointFormatError",
    "UnsafeCheckpointError",
    "IncompatibleCheckpointError",
    "UnknownVariantError",
    "OutputExistsError",
    "ImageReadError",
    "UnsupportedInputSizeError",
    "REGISTRY",
    "VariantSpec",
    "all_variants",
    "get_variant",
    "build_model",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'midaskit' has no attribute {name!r}")
