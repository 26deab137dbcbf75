"""The preprocessing pipeline against the official transforms' outputs (4 images x 7 configs)."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from conftest import REFERENCE
from midaskit.errors import ImageReadError
from midaskit.preprocess import network_size, prepare_image, read_image
from midaskit.variants import all_variants, get_variant

PRE = REFERENCE / "preprocess"
CASES = json.loads((PRE / "preprocess.json").read_text())


@pytest.fixture(scope="module")
def fixtures():
    with np.load(PRE / "preprocess.npz") as data:
        yield {k: data[k] for k in data.files}


def test_every_variant_uses_a_referenced_configuration():
    covered = {v for case in CASES.values() for v in case["variants"]}
    assert covered == {spec.name for spec in all_variants()}


@pytest.mark.parametrize("key", sorted(CASES))
def test_matches_official_transform(key, fixtures):
    case = CASES[key]
    spec = get_variant(case["variants"][0])
    pre = spec.preprocess
    assert (pre.net_w, pre.net_h) == (case["net_w"], case["net_h"])
    assert pre.resize_mode == case["resize_mode"]
    assert pre.keep_aspect_ratio == case["keep_aspect_ratio"]
    assert list(pre.mean) == case["normalization"]["mean"]
    ours = prepare_image(read_image(PRE / "images" / f"{case['image']}.png"), pre)
    assert list(ours.shape) == case["output_chw"]
    expected = fixtures[key].astype(np.float32)
    # the fixtures are stored as float16: compare at float16 resolution (|x| < 2.7 -> 2**-10)
    np.testing.assert_allclose(ours, expected, rtol=0, atol=2.5e-3)
    assert float(ours.mean()) == pytest.approx(case["mean"], abs=1e-6)
    assert float(ours.min()) == pytest.approx(case["min"], abs=1e-6)
    assert float(ours.max()) == pytest.approx(case["max"], abs=1e-6)


@pytest.mark.parametrize("key", sorted(CASES))
def test_matches_official_transform_bit_exactly(key):
    import hashlib

    case = CASES[key]
    pre = get_variant(case["variants"][0]).preprocess
    ours = prepare_image(read_image(PRE / "images" / f"{case['image']}.png"), pre)
    assert hashlib.sha256(ours.tobytes()).hexdigest() == case["sha256_float32"]


def test_network_size_rounds_to_multiples_of_32():
    pre = get_variant("dpt_beit_large_512").preprocess
    for h, w in [(480, 640), (1080, 1920), (31, 33), (1000, 10)]:
        nh, nw = network_size(h, w, pre)
        assert nh % 32 == 0 and nw % 32 == 0 and nh > 0 and nw > 0


def test_sixteen_bit_png_keeps_precision(tmp_path):
    img = (np.arange(64 * 48 * 3, dtype=np.uint32).reshape(48, 64, 3) * 7 % 65536)
    path = tmp_path / "deep.png"
    cv2.imwrite(str(path), img.astype(np.uint16))
    rgb = read_image(path)
    np.testing.assert_allclose(rgb, img[:, :, ::-1] / 65535.0)


def test_grayscale_and_alpha_become_rgb(tmp_path):
    gray = (np.arange(20 * 30) % 256).astype(np.uint8).reshape(20, 30)
    cv2.imwrite(str(tmp_path / "g.png"), gray)
    rgba = np.dstack([gray, gray, gray, np.full_like(gray, 7)])
    cv2.imwrite(str(tmp_path / "a.png"), rgba)
    for name in ("g.png", "a.png"):
        rgb = read_image(tmp_path / name)
        assert rgb.shape == (20, 30, 3)
        np.testing.assert_allclose(rgb[:, :, 0], gray / 255.0)


@pytest.mark.parametrize("content", [b"", b"not an image at all", b"\x89PNG\r\n\x1a\n\x00\x00"])
def test_unreadable_images_raise_one_line_errors(tmp_path, content):
    path = tmp_path / "bad.png"
    path.write_bytes(content)
    with pytest.raises(ImageReadError) as info:
        read_image(path)
    assert "bad.png" in str(info.value) and "\n" not in str(info.value)
