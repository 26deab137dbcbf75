"""Interoperability: transformers DPT folders, plain safetensors files, ONNX export.

Nothing here is imported by the core; transformers and onnxruntime are optional extras
(``pip install 'midaskit[hf]'``, ``'midaskit[onnx]'``) imported only by the functions needing them.
"""

from __future__ import annotations

from .deps import MissingExtraError
from .hf import HF_VARIANTS, hf_to_official, is_hf_layout, official_to_hf

__all__ = ["HF_VARIANTS", "MissingExtraError", "hf_to_official", "is_hf_layout", "official_to_hf"]
