"""The official MiDaS input pipeline: read RGB in [0, 1], resize (keep aspect ratio, multiple of
32, ``minimal`` / ``upper_bound``, OpenCV cubic), normalise, lay out as ``(3, H, W)`` float32.

Reproduces ``midas/transforms.py`` (``Resize``, ``NormalizeImage``, ``PrepareForNet``) and
``utils.read_image`` of isl-org/MiDaS; checked against the official outputs in
``tests/data/reference/preprocess``.
"""

from __future__ import annotations

import math
import struct
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
    would truncate them to 8 bits; 8-bit images give exactly the official values. Float images
    (TIFF, EXR) are clipped to [0, 1], NaN read as 0.

    Raises:
        ImageReadError: missing, unreadable, not an image, of a pixel type we do not scale (signed
            integers), or larger than ``MAX_IMAGE_PIXELS`` (refused from the header, before
            decoding, for PNG, JPEG, BMP and WebP).
    """
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"{path}: no such image file")
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as exc:  # no permission, a disk error: one input, not the whole batch
        raise ImageReadError(f"{path}: cannot be read ({exc.strerror or exc})") from exc
    if data.size == 0:
        raise ImageReadError(f"{path}: the file is empty")
    # a 1 MB PNG can declare 20000x20000 pixels: refuse it before OpenCV allocates them
    _check_size(path, _declared_size(data.data))
    img = cv2.imdecode(data, cv2.IMREAD_COLOR | cv2.IMREAD_ANYDEPTH)
    if img is None:
        raise ImageReadError(f"{path}: not an image OpenCV can decode (corrupt or unknown format)")
    _check_size(path, (img.shape[1], img.shape[0]))  # formats whose header we do not parse
    scale = _SCALES.get(img.dtype)
    if scale is None:
        raise ImageReadError(
            f"{path}: {img.dtype} pixels are not supported; save it as 8- or 16-bit unsigned or "
            "as float"
        )
    rgb = img[:, :, ::-1].astype(np.float64)  # BGR -> RGB (any depth; cvtColor has few)
    rgb /= scale
    return np.clip(np.nan_to_num(rgb), 0.0, 1.0, out=rgb) if scale == 1.0 else rgb


_SCALES = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0,
           np.dtype(np.float32): 1.0, np.dtype(np.float64): 1.0}
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # start-of-frame markers


def _check_size(path: Path, size: tuple[int, int] | None) -> None:
    if size is not None and size[0] * size[1] > MAX_IMAGE_PIXELS:
        raise ImageReadError(
            f"{path}: {size[0]}x{size[1]} is larger than midaskit decodes "
            f"({MAX_IMAGE_PIXELS} pixels); downscale it first"
        )


def _declared_size(buf: memoryview) -> tuple[int, int] | None:
    """``(width, height)`` from a PNG, JPEG, BMP or WebP header, read without decoding; ``None``
    for other formats and for headers too short to say (the decoder then rejects them)."""
    head = bytes(buf[:32])
    if head.startswith(b"\x89PNG\r\n\x1a\n") and head[12:16] == b"IHDR" and len(head) >= 24:
        return struct.unpack(">II", head[16:24])
    if head.startswith(b"BM") and len(head) >= 26:
        if struct.unpack("<I", head[14:18])[0] == 12:  # OS/2 BITMAPCOREHEADER: 16-bit sizes
            return struct.unpack("<HH", head[18:22])
        width, height = struct.unpack("<ii", head[18:26])
        return abs(width), abs(height)
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP" and len(head) >= 30:
        if head[12:16] == b"VP8X":
            return (int.from_bytes(head[24:27], "little") + 1,
                    int.from_bytes(head[27:30], "little") + 1)
        if head[12:16] == b"VP8L":
            bits = int.from_bytes(head[21:25], "little")
            return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
        if head[12:16] == b"VP8 ":
            width, height = struct.unpack("<HH", head[26:30])
            return width & 0x3FFF, height & 0x3FFF
    if head.startswith(b"\xff\xd8"):
        return _jpeg_size(buf)
    return None


def _jpeg_size(buf: memoryview) -> tuple[int, int] | None:
    pos = 2
    while pos + 9 <= len(buf):  # walk the segments up to the first start-of-frame
        if buf[pos] != 0xFF:
            return None
        marker = buf[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
        elif marker in _JPEG_SOF:
            height, width = struct.unpack(">HH", buf[pos + 5 : pos + 9])
            return width, height
        elif marker == 0x01 or 0xD0 <= marker <= 0xD9:  # segments without a length
            pos += 2
        else:
            pos += 2 + struct.unpack(">H", buf[pos + 2 : pos + 4])[0]
    return None


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
