"""Depth-map files: PFM (the official format), 16-bit PNG and an inferno colour PNG, written
atomically (temporary file + rename) so a failure never leaves a partial output.

Formats follow isl-org/MiDaS ``utils.py`` (``write_pfm``, ``write_depth``): PNGs are min-max
scaled; PFM holds the raw float32 prediction, bottom row first, little-endian (negative scale).
"""

from __future__ import annotations

import re
from pathlib import Path

import cv2
import numpy as np

from .checkpoint.write import atomic_write
from .errors import ImageReadError, MidaskitError, OutputExistsError

__all__ = [
    "FORMATS",
    "atomic_write_bytes",
    "write_pfm",
    "read_pfm",
    "encode_png16",
    "encode_color",
    "encode_pfm",
    "check_writable",
]

# format name -> file suffix appended to the output stem
FORMATS: dict[str, str] = {"pfm": ".pfm", "png16": ".png", "color": "-inferno.png"}


def check_writable(path: Path, *, overwrite: bool, inputs: frozenset[Path] = frozenset()) -> None:
    """Refuse to write over an input, or over an existing file without ``overwrite``."""
    resolved = path.resolve()
    if resolved in inputs:
        raise OutputExistsError(f"{path}: refusing to write an output over one of the inputs")
    if path.exists() and not overwrite:
        raise OutputExistsError(f"{path} exists; pass --overwrite to replace it")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` (creating its folders) through a temporary file in the same
    folder, flushed, then renamed: ``path`` never holds a partial file.

    Raises:
        MidaskitError: the folder or file cannot be written (no permission, disk full, ...).
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise MidaskitError(f"{path.parent}: cannot create the folder ({exc.strerror or exc})"
                            ) from exc
    atomic_write(path, lambda fh: fh.write(data))


def encode_pfm(depth: np.ndarray) -> bytes:
    """A grayscale PFM of ``depth`` ``(H, W)`` float32, as the official ``write_pfm``."""
    depth = np.asarray(depth, dtype=np.float32)
    if depth.ndim != 2:
        raise ValueError(f"depth must be (H, W), got {depth.shape}")
    header = f"Pf\n{depth.shape[1]} {depth.shape[0]}\n-1.000000\n".encode("ascii")
    return header + np.flipud(depth).astype("<f4").tobytes()


def write_pfm(path: Path, depth: np.ndarray) -> None:
    """Write ``depth`` as PFM atomically."""
    atomic_write_bytes(Path(path), encode_pfm(depth))


def read_pfm(path: Path) -> np.ndarray:
    """Read a PFM written by us or by the official code: ``(H, W)`` or ``(H, W, 3)`` float32."""
    with open(path, "rb") as f:
        kind = f.readline().strip()
        if kind not in (b"Pf", b"PF"):
            raise ImageReadError(f"{path}: not a PFM file")
        dims = re.match(rb"^(\d+)\s+(\d+)\s*$", f.readline())
        if not dims:
            raise ImageReadError(f"{path}: malformed PFM header")
        width, height = int(dims.group(1)), int(dims.group(2))
        scale = float(f.readline().strip())
        data = np.frombuffer(f.read(), dtype="<f4" if scale < 0 else ">f4")
    shape = (height, width, 3) if kind == b"PF" else (height, width)
    if data.size != int(np.prod(shape)):
        raise ImageReadError(f"{path}: truncated PFM ({data.size} values for {shape})")
    return np.flipud(data.reshape(shape)).astype(np.float32)


def _normalised(depth: np.ndarray, max_val: int) -> np.ndarray:
    depth = np.nan_to_num(np.asarray(depth, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    lo, hi = float(depth.min()), float(depth.max())
    if hi - lo > np.finfo("float").eps:
        return max_val * (depth - lo) / (hi - lo)
    return np.zeros_like(depth)


def encode_png16(depth: np.ndarray) -> bytes:
    """16-bit grayscale PNG, min-max scaled to 0..65535 as the official ``write_depth(bits=2)``."""
    ok, buf = cv2.imencode(".png", _normalised(depth, 65535).astype(np.uint16))
    if not ok:  # pragma: no cover - OpenCV always encodes uint16 PNG
        raise ValueError("OpenCV could not encode the depth map as PNG")
    return buf.tobytes()


def encode_color(depth: np.ndarray) -> bytes:
    """8-bit inferno colour PNG, as the official ``write_depth(grayscale=False)``."""
    colored = cv2.applyColorMap(np.uint8(_normalised(depth, 255)), cv2.COLORMAP_INFERNO)
    ok, buf = cv2.imencode(".png", colored)
    if not ok:  # pragma: no cover
        raise ValueError("OpenCV could not encode the colour map as PNG")
    return buf.tobytes()


ENCODERS = {"pfm": encode_pfm, "png16": encode_png16, "color": encode_color}
