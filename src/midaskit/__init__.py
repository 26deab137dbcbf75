"""midaskit: load any MiDaS checkpoint, explain why a checkpoint does not fit a model, predict
depth."""

from .errors import (
    CheckpointFormatError,
    IncompatibleCheckpointError,
    MidaskitError,
    UnknownVariantError,
    UnsafeCheckpointError,
)
from .variants import REGISTRY, VariantSpec, all_variants, build_model, get_variant

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "MidaskitError",
    "CheckpointFormatError",
    "UnsafeCheckpointError",
    "IncompatibleCheckpointError",
    "UnknownVariantError",
    "REGISTRY",
    "VariantSpec",
    "all_variants",
    "get_variant",
    "build_model",
]
