"""Images that break readers: each is predicted correctly or refused in one line, and the rest of
a batch goes on.

Every image is written here: by OpenCV, or byte by byte where OpenCV cannot write it (a CMYK
JPEG, an EXIF orientation, headers declaring 20000x20000 pixels).
"""

from __future__ import annotations

import random
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fuzz_util as fu
from midaskit.cli.main import main as cli
from midaskit.errors import EXIT_FIXED, ImageReadError
from midaskit.outputs import read_pfm
from midaskit.prediction import predict
from midaskit.preprocess import MAX_IMAGE_PIXELS, Transform, read_image
from midaskit.variants import get_variant

# -- images OpenCV does not write -----------------------------------------------------------------


def _segment(marker: int, payload: bytes) -> bytes:
    return bytes([0xFF, marker]) + struct.pack(">H", len(payload) + 2) + payload


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_declaring(width: int, height: int) -> bytes:
    """A PNG header declaring ``width x height`` RGB pixels, with one row of data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" + bytes(3 * min(width, 1000)))
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat)
            + _png_chunk(b"IEND", b""))


def jpeg_declaring(width: int, height: int) -> bytes:
    """An 8x8 JPEG from OpenCV whose start-of-frame says ``width x height``."""
    data = bytearray(cv2.imencode(".jpg", np.zeros((8, 8, 3), np.uint8))[1].tobytes())
    sof = data.index(b"\xff\xc0")
    struct.pack_into(">HH", data, sof + 5, height, width)
    return bytes(data)


def bmp_declaring(width: int, height: int) -> bytes:
    info = struct.pack("<IiiHHIIiiII", 40, width, -height, 1, 24, 0, 0, 0, 0, 0, 0)
    return b"BM" + struct.pack("<IHHI", 54 + 64, 0, 0, 54) + info + bytes(64)


def webp_declaring(width: int, height: int) -> bytes:
    vp8x = b"VP8X" + struct.pack("<I", 10) + bytes(4) + (width - 1).to_bytes(3, "little") + (
        height - 1).to_bytes(3, "little")
    return b"RIFF" + struct.pack("<I", 4 + len(vp8x)) + b"WEBP" + vp8x


def exif_jpeg(image: np.ndarray, orientation: int) -> bytes:
    """A JPEG of ``image`` (BGR) with an EXIF APP1 segment holding only the orientation tag."""
    data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 100])[1].tobytes()
    ifd = struct.pack("<H", 1) + struct.pack("<HHIHH", 0x0112, 3, 1, orientation, 0)
    tiff = b"II*\x00" + struct.pack("<I", 8) + ifd + struct.pack("<I", 0)  # one IFD, no next
    return data[:2] + _segment(0xE1, b"Exif\x00\x00" + tiff) + data[2:]


_DC_BITS = (0, 1, 5, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0)  # JPEG Annex K luminance DC table


def cmyk_jpeg(cmyk: tuple[int, int, int, int], size: int = 8) -> bytes:
    """A baseline JPEG of one flat colour in four components with Adobe transform 0 (CMYK, as
    Photoshop writes it: stored inverted). Each component is one 8x8 block holding only its DC
    coefficient (quantiser 1), then an end-of-block, the only AC symbol."""
    codes, code, symbol = {}, 0, 0
    for length, count in enumerate(_DC_BITS, start=1):
        for _ in range(count):
            codes[symbol], code, symbol = (code, length), code + 1, symbol + 1
        code <<= 1
    bits: list[int] = []

    def put(value: int, n: int) -> None:
        bits.extend((value >> i) & 1 for i in reversed(range(n)))

    for value in cmyk:
        diff = 8 * (value - 128)  # the DC coefficient of a flat level-shifted block
        category = abs(diff).bit_length()
        put(*codes[category])
        put(diff if diff >= 0 else diff + (1 << category) - 1, category)
        put(0, 1)  # end of block
    bits.extend([1] * (-len(bits) % 8))
    scan = bytes(int("".join(map(str, bits[i : i + 8])), 2) for i in range(0, len(bits), 8))
    components = b"".join(bytes([i, 0x11, 0]) for i in range(1, 5))
    return b"".join([
        b"\xff\xd8",
        _segment(0xEE, b"Adobe" + struct.pack(">HHHB", 100, 0, 0, 0)),
        _segment(0xDB, b"\x00" + bytes([1] * 64)),
        _segment(0xC0, struct.pack(">BHHB", 8, size, size, 4) + components),
        _segment(0xC4, b"\x00" + bytes(_DC_BITS) + bytes(range(12))),
        _segment(0xC4, b"\x10" + bytes([1] + [0] * 15) + b"\x00"),
        _segment(0xDA, b"\x04" + b"".join(bytes([i, 0]) for i in range(1, 5)) + b"\x00\x3f\x00"),
        scan.replace(b"\xff", b"\xff\x00"),
        b"\xff\xd9",
    ])


def _encoded(suffix: str, image: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(suffix, image)
    assert ok
    return buf.tobytes()


GRADIENT = (np.arange(24 * 32 * 3) % 251).astype(np.uint8).reshape(24, 32, 3)

# name: (file name, bytes) of images midaskit must refuse, with a phrase of the reason
REFUSED = {
    "empty": ("empty.png", lambda: b"", "empty"),
    "not an image": ("notes.jpg", lambda: b"shopping list: milk, eggs\n", "can decode"),
    "html": ("page.png", lambda: b"<!DOCTYPE html><html></html>", "can decode"),
    "truncated png": ("cut.png", lambda: _encoded(".png", GRADIENT)[:200], "can decode"),
    "png header only": ("head.png", lambda: _encoded(".png", GRADIENT)[:33], "can decode"),
    "truncated jpeg": ("cut.jpg", lambda: _encoded(".jpg", GRADIENT)[:-60], "can decode"),
    "int32 tiff": ("int.tif", lambda: _encoded(".tif", GRADIENT.astype(np.int32)), "int32"),
    "giant png": ("giant.png", lambda: png_declaring(20000, 20000), "20000x20000"),
    "giant jpeg": ("giant.jpg", lambda: jpeg_declaring(60000, 60000), "60000x60000"),
    "giant bmp": ("giant.bmp", lambda: bmp_declaring(20000, 20000), "20000x20000"),
    "giant webp": ("giant.webp", lambda: webp_declaring(16000, 16000), "16000x16000"),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_refused_in_one_line(case: str, tmp_path: Path, monkeypatch) -> None:
    name, build, phrase = REFUSED[case]
    path = tmp_path / name
    path.write_bytes(build())
    if case.startswith("giant"):  # refused from the header: OpenCV must never allocate them
        monkeypatch.setattr(cv2, "imdecode", lambda *a: pytest.fail("decoded a giant image"))
    with pytest.raises(ImageReadError) as err:
        read_image(path)
    message = str(err.value)
    assert phrase in message and name in message and "\n" not in message


def test_unreadable_file_is_refused_in_one_line(tmp_path: Path, monkeypatch) -> None:
    def denied(*args: object, **kwargs: object) -> None:
        raise PermissionError(13, "Permission denied")

    path = tmp_path / "locked.png"
    cv2.imwrite(str(path), GRADIENT)
    monkeypatch.setattr(np, "fromfile", denied)  # root reads any file: simulate chmod 000
    with pytest.raises(ImageReadError, match="locked.png: cannot be read .Permission denied"):
        read_image(path)


def test_giant_declaration_check_comes_from_the_header() -> None:
    assert 20000 * 20000 > MAX_IMAGE_PIXELS > 8000 * 6000  # a 48-megapixel photo still reads


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    image = np.zeros((20, 40, 3), np.uint8)
    image[:, :10] = (0, 0, 255)  # a red band on the left (BGR)
    path = tmp_path / "rotated.jpg"
    path.write_bytes(exif_jpeg(image, orientation=6))  # "rotate 90 degrees clockwise to view"
    rgb = read_image(path)
    assert rgb.shape == (40, 20, 3)
    assert rgb[:8, :, 0].mean() > 0.95 and rgb[12:, :, 0].mean() < 0.05  # the band is on top


@pytest.mark.parametrize(
    ("cmyk", "rgb"),
    [((255, 255, 255, 255), (255, 255, 255)), ((200, 100, 50, 255), (200, 100, 50)),
     ((255, 255, 255, 0), (0, 0, 0))],
    ids=["white", "orange", "black"],
)
def test_cmyk_jpeg_is_read_as_rgb(tmp_path: Path, cmyk, rgb) -> None:
    path = tmp_path / "cmyk.jpg"
    path.write_bytes(cmyk_jpeg(cmyk))
    image = read_image(path)
    assert image.shape == (8, 8, 3)
    np.testing.assert_allclose(image.reshape(-1, 3).mean(0) * 255, rgb, atol=2.0)


def test_float_tiffs_are_clipped_and_finite(tmp_path: Path) -> None:
    values = np.linspace(-0.5, 1.5, 6 * 4 * 3).reshape(6, 4, 3)
    values[0, 0] = np.nan
    for dtype in (np.float32, np.float64):  # float64 failed in cvtColor before
        path = tmp_path / f"{np.dtype(dtype).name}.tif"
        assert cv2.imwrite(str(path), values.astype(dtype))
        rgb = read_image(path)
        assert np.isfinite(rgb).all() and rgb.min() == 0.0 and rgb.max() == 1.0
        np.testing.assert_allclose(rgb[2, 1], np.clip(values[2, 1, ::-1], 0, 1), rtol=1e-6)


def test_one_pixel_image(tmp_path: Path) -> None:
    path = tmp_path / "dot.png"
    cv2.imwrite(str(path), np.array([[[10, 20, 30]]], np.uint8))
    np.testing.assert_allclose(read_image(path)[0, 0], np.array([30, 20, 10]) / 255)


# -- a batch with every kind of image -------------------------------------------------------------


class _MeanDepth(torch.nn.Module):
    """(B, 3, H, W) -> (B, H, W): a 1x1 convolution averaging the channels."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 1, 1, bias=False)
        torch.nn.init.constant_(self.conv.weight, 1 / 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)[:, 0]


@dataclass
class StandIn:
    """What ``predict(loaded=...)`` needs: a tiny model with the real transform of a variant."""

    model: torch.nn.Module = field(default_factory=_MeanDepth)
    spec: Any = field(default_factory=lambda: get_variant("midas_v21_small_256"))
    steps: list = field(default_factory=list)

    @property
    def transform(self) -> Transform:
        return Transform(self.spec.preprocess)


def _good_images(folder: Path) -> dict[str, tuple[int, int]]:
    """Write every readable kind of image; returns ``{name: (height, width) of the view}``."""
    cv2.imwrite(str(folder / "photo.png"), GRADIENT)
    cv2.imwrite(str(folder / "deep.png"), GRADIENT.astype(np.uint16) * 257)
    cv2.imwrite(str(folder / "gray.png"), GRADIENT[:, :, 0])
    cv2.imwrite(str(folder / "alpha.png"), np.dstack([GRADIENT, GRADIENT[:, :, :1]]))
    cv2.imwrite(str(folder / "dot.png"), GRADIENT[:1, :1])
    (folder / "cmyk.jpg").write_bytes(cmyk_jpeg((200, 100, 50, 255)))
    (folder / "rotated.jpg").write_bytes(exif_jpeg(GRADIENT, orientation=6))
    return {"photo": (24, 32), "deep": (24, 32), "gray": (24, 32), "alpha": (24, 32),
            "dot": (1, 1), "cmyk": (8, 8), "rotated": (32, 24)}


@pytest.mark.parametrize("batch", [1, 3])
def test_a_batch_goes_on_past_broken_images(tmp_path: Path, batch: int, capsys) -> None:
    images = tmp_path / "images"
    images.mkdir()
    good = _good_images(images)
    for name, build, _ in REFUSED.values():
        (images / f"bad-{name}").write_bytes(build())
    out = tmp_path / "out"
    summary = predict([images], out, loaded=StandIn(), formats=("pfm", "png16"), batch=batch,
                      progress=False)
    assert summary.predicted == len(good)
    assert sorted(p.name for p, _ in summary.skipped) == sorted(
        f"bad-{name}" for name, _, _ in REFUSED.values())
    assert all("\n" not in reason for _, reason in summary.skipped)
    for stem, shape in good.items():
        depth = read_pfm(out / f"{stem}.pfm")
        assert depth.shape == shape and np.isfinite(depth).all(), stem
    assert sorted(p.name for p in out.iterdir()) == sorted(
        f"{stem}{suffix}" for stem in good for suffix in (".pfm", ".png"))
    warnings = capsys.readouterr().err.strip().splitlines()
    assert len(warnings) == len(REFUSED) and "Traceback" not in "".join(warnings)


def test_cli_predict_skips_broken_images_with_one_line_each(tmp_path: Path, capsys,
                                                            reference_checkpoint) -> None:
    """The real command and weights: exit code 1 when inputs were skipped, never a traceback."""
    images = tmp_path / "images"
    images.mkdir()
    cv2.imwrite(str(images / "photo.png"), GRADIENT)
    (images / "empty.png").write_bytes(b"")
    (images / "giant.png").write_bytes(png_declaring(20000, 20000))
    weights = reference_checkpoint("midas_v21_small_256")
    code = cli(["predict", str(images), "-o", str(tmp_path / "out"), "--weights", str(weights),
                "--format", "pfm", "--quiet"])
    out, err = capsys.readouterr()
    assert code == EXIT_FIXED
    assert "1 image(s) predicted" in out and "2 skipped" in out and "Traceback" not in err
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["photo.pfm"]
    assert read_pfm(tmp_path / "out" / "photo.pfm").shape == (24, 32)


# -- fuzzing the image reader ---------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
@settings(max_examples=150, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(rng=st.randoms(use_true_random=False))
def test_mutated_images_are_read_or_refused(suffix: str, rng: random.Random, tmp_path: Path
                                            ) -> None:
    data = _encoded(suffix, GRADIENT)
    marks = [0, 8, 16, 24, 33, len(data)] if suffix == ".png" else [0, 2, 20, len(data)]
    mutations = fu.random_mutations(rng, len(data), marks)
    path = tmp_path / f"fuzz{suffix}"
    path.write_bytes(fu.apply_all(data, mutations))
    try:
        rgb = read_image(path)
    except ImageReadError as exc:
        assert "\n" not in str(exc)
    else:
        assert rgb.ndim == 3 and rgb.shape[2] == 3 and rgb.dtype == np.float64
        assert rgb.shape[0] * rgb.shape[1] <= MAX_IMAGE_PIXELS
