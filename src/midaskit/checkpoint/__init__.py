"""Reading checkpoints safely (no pickle code runs) and lazily (shapes without tensor bytes).

``open_checkpoint`` reads torch zip, legacy torch and safetensors files without importing torch;
``find_state_dict`` locates the state dict inside its container; ``read_state_dict_meta`` combines
the two; ``load_tensors`` gives memory-mapped tensors; ``write_checkpoint`` writes atomically.
"""

from .lazy import LazyTensor
from .reader import load_tensors, open_checkpoint, read_state_dict_meta
from .safe_pickle import Placeholder
from .types import Checkpoint, TensorMeta
from .unwrap import Unwrapped, find_state_dict
from .write import write_checkpoint

__all__ = [
    "Checkpoint",
    "LazyTensor",
    "Placeholder",
    "TensorMeta",
    "Unwrapped",
    "find_state_dict",
    "load_tensors",
    "open_checkpoint",
    "read_state_dict_meta",
    "write_checkpoint",
]
