"""Plain data describing the tensors of a checkpoint without their bytes.

These types are shared by the reader, the doctor and identification; none of them imports torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["TensorMeta", "DTYPE_SIZES"]

# bytes per element, keyed by the dtype names torch uses (``str(torch.float32)`` minus "torch.")
DTYPE_SIZES: dict[str, int] = {
    "float64": 8,
    "float32": 4,
    "float16": 2,
    "bfloat16": 2,
    "int64": 8,
    "int32": 4,
    "int16": 2,
    "int8": 1,
    "uint8": 1,
    "bool": 1,
    "complex64": 8,
    "complex128": 16,
    "float8_e4m3fn": 1,
    "float8_e5m2": 1,
}


@dataclass(frozen=True)
class TensorMeta:
    """Shape and dtype of one state-dict entry; enough to compare layouts without any data.

    Attributes:
        shape: the tensor's shape, ``()`` for a scalar.
        dtype: torch dtype name without the ``torch.`` prefix, e.g. ``"float32"``.
    """

    shape: tuple[int, ...]
    dtype: str = "float32"

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.numel * DTYPE_SIZES.get(self.dtype, 4)

    @property
    def is_floating(self) -> bool:
        return self.dtype.startswith(("float", "bfloat", "complex"))
