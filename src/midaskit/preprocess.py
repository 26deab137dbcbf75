"""The official MiDaS input pipeline: read RGB in [0, 1], resize (keep aspect ratio, multiple of
32, ``minimal`` / ``upper_bound``, OpenCV cubic), normalise, lay out as ``(3, H, W)`` float32.

Reproduces ``midas/transforms.py`` (``Resize``, ``NormalizeImage``, ``PrepareForNet``) and
``utils.read_image`` of isl-org/MiDaS; checked against the official outputs in
``tests/data/reference/preprocess``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from .errors import ImageReadError
from .variants import Preprocess

__all__ = ["network_size", "read_image", "prepare_image", "Transform"]

# larger images are refused before they can exhaust memory (1.6 GB as float64 RGB)
MAX_IMAGE_PIXELS = 8192 * 8192


def _constrain_to_multiple(
    x: float, multiple: int, *, min_val: int = 0, max_val: int | None = None
) -> int:
    # np.round rounds half to even, as the official code does
    y = int(np.round(x / multiple) * multiple)
    if max_val is not None and y > max_val:
        y = int(math.floor(x / multiple) * multiple)
    if y < min_val:
        y = int(math.ceil(x / multiple) * multiple)
    # the official code returns 0 for extreme aspect ratios and then crashes in cv2.resize
    return max(y, multiple)


def network_size(height: int, width: int, pre: Preprocess) -> tuple[int, int]:
    """The ``(height, width)`` the official ``Resize`` gives an image of ``height x width``."""
    scale_h = pre.net_h / height
    scale_w = pre.net_w / width
    if pre.keep_aspect_ratio:
        if pre.resize_mode == "upper_bound":
            scale_h = scale_w = min(scale_h, scale_w)
        elif pre.resize_mode == "lower_bound":
            scale_h = scale_w = max(scale_h, scale_w)
        elif pre.resize_mode == "minimal":
            # scale as little as possible: fit the side whose scale is closest to 1
            if abs(1 - scale_w) < abs(1 - scale_h):
                scale_h = scale_w
            else:
                scale_w = scale_h
        else:
            raise ValueError(f"unknown resize mode {pre.resize_mode!r}")
    m = pre.ensure_multiple_of
    if pre.resize_mode == "upper_bound":
        bounds_h, bounds_w = {"max_val": pre.net_h}, {"max_val": pre.net_w}
    elif pre.resize_mode == "lower_bound":
        bounds_h, bounds_w = {"min_val": pre.net_h}, {"min_val": pre.net_w}
    else:
        bounds_h = bounds_w = {}
    return (
        _constrain_to_multiple(scale_h * height, m, **bounds_h),
        _constrain_to_multiple(scale_w * width, m, **bounds_w),
    )


def read_image(path: str | Path) -> np.ndarray:
    """Read an image file as RGB float64 in [0, 1], ``(H, W, 3)``, as the official ``read_image``.

    Grayscale is expanded to RGB, alpha is dropped, EXIF orientation is applied (OpenCV's
    default). 16-bit images keep their precision (divided by 65535) where the official reader
    would truncate them to 8 bits; 8-bit images give exactly the official values.

    Raises:
        ImageReadError: missing, unreadable, not an image, or too large to decode safely.
    """
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"{path}: no such image file")
    data = np.fromfile(path, dtype=np.uint8)
    if data.size == 0:
        raise ImageReadError(f"{path}: the file is empty")
    img = cv2.imdecode(data, cv2.IMREAD_COLOR | cv2.IMREAD_ANYDEPTH)
    if img is None:
        raise ImageReadError(f"{path}: not an image OpenCV can decode (corrupt or unknown format)")
    if img.shape[0] * img.shape[1] > MAX_IMAGE_PIXELS:
        raise ImageReadError(
            f"{path}: {img.shape[1]}x{img.shape[0]} is larger than midaskit decodes "
            f"({MAX_IMAGE_PIXELS} pixels); downscale it first"
        )
    if img.dtype == np.uint8:
        scale = 255.0
    elif img.dtype == np.uint16:
        scale = 65535.0
    else:
        scale = 1.0
    rgb = cv2.cvtColor(img, cv2.COLOR_BGR2RGB).astype(np.float64) / scale
    return np.clip(rgb, 0.0, 1.0) if scale == 1.0 else rgb


def prepare_image(image: np.ndarray, pre: Preprocess) -> np.ndarray:
    """RGB ``(H, W, 3)`` in [0, 1] -> normalised network input ``(3, H', W')`` float32."""
    if image.ndim != 3 or image.shape[2] != 3:
        raise ImageReadError(f"expected an RGB image of shape (H, W, 3), got {image.shape}")
    new_h, new_w = network_size(image.shape[0], image.shape[1], pre)
    resized = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_CUBIC)
    normalised = (resized - np.asarray(pre.mean)) / np.asarray(pre.std)
    return np.ascontiguousarray(normalised.transpose(2, 0, 1)).astype(np.float32)


@dataclass(frozen=True)
class Transform:
    """A variant's input transform; call it on an RGB ``(H, W, 3)`` image in [0, 1]."""

    preprocess: Preprocess

    def __call__(self, image: np.ndarray) -> np.ndarray:
        return prepare_image(image, self.preprocess)

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """``(H', W')`` of the network input for an image of ``height x width``."""
        return network_size(height, width, self.preprocess)
