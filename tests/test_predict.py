"""predict: official preprocessing + forward + resize back, three output formats read back,
skipped inputs, no overwriting; the predict and variants subcommands; the demo."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from conftest import REFERENCE
from midaskit import load
from midaskit.cli.main import main
from midaskit.errors import OutputExistsError
from midaskit.outputs import read_pfm
from midaskit.prediction import collect_inputs, predict, predict_arrays
from midaskit.preprocess import read_image

VARIANT = "midas_v21_small_256"
IMAGES = REFERENCE / "preprocess" / "images"


@pytest.fixture(scope="module")
def weights(reference_checkpoint):
    return reference_checkpoint(VARIANT)


@pytest.fixture(scope="module")
def loaded(weights):
    return load(weights)


def test_depth_is_the_official_forward_resized_bicubic(loaded):
    image = read_image(IMAGES / "odd_333x517.png")
    (depth,) = predict_arrays(loaded, [image])
    assert depth.shape == (333, 517)
    x = torch.from_numpy(loaded.transform(image))[None]
    with torch.inference_mode():
        raw = loaded.model(x)
        expected = torch.nn.functional.interpolate(raw[:, None], size=(333, 517), mode="bicubic",
                                                   align_corners=False)[0, 0].numpy()
    np.testing.assert_allclose(depth, expected, rtol=0, atol=1e-6)


def test_batches_give_the_same_depth_as_single_images(loaded):
    images = [read_image(IMAGES / f"{n}.png") for n in ("land_480x640", "port_640x480",
                                                        "land_480x640")]
    batched = predict_arrays(loaded, images)
    single = [predict_arrays(loaded, [img])[0] for img in images]
    for a, b in zip(batched, single, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * float(np.abs(b).max()))


def test_writes_three_formats_that_read_back(tmp_path, loaded):
    summary = predict([IMAGES / "land_480x640.png"], tmp_path / "out", loaded=loaded)
    names = sorted(p.name for p in summary.written)
    assert names == ["land_480x640-inferno.png", "land_480x640.pfm", "land_480x640.png"]
    (depth,) = predict_arrays(loaded, [read_image(IMAGES / "land_480x640.png")])
    pfm = read_pfm(tmp_path / "out" / "land_480x640.pfm")
    np.testing.assert_array_equal(pfm, depth.astype(np.float32))
    png16 = cv2.imread(str(tmp_path / "out" / "land_480x640.png"), cv2.IMREAD_UNCHANGED)
    assert png16.dtype == np.uint16 and png16.shape == (480, 640)
    assert png16.min() == 0 and png16.max() == 65535
    d = depth.astype(np.float64)
    scaled = 65535 * (d - d.min()) / (d.max() - d.min())
    assert np.abs(png16.astype(np.float64) - scaled).max() <= 1.0
    color = cv2.imread(str(tmp_path / "out" / "land_480x640-inferno.png"))
    assert color.shape == (480, 640, 3)
    # inferno's darkest colour is near black: the farthest point (minimum) must be dark
    row, col = np.unravel_index(np.argmin(depth), depth.shape)
    assert color[row, col].sum() < 60


def test_folder_inputs_mirror_their_tree_and_skip_corrupt_images(tmp_path, loaded):
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    cv2.imwrite(str(src / "a.png"), cv2.imread(str(IMAGES / "tiny_48x64.png")))
    cv2.imwrite(str(src / "sub" / "b.jpg"), cv2.imread(str(IMAGES / "tiny_48x64.png")))
    (src / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    (src / "notes.txt").write_text("not an image")
    summary = predict([src], tmp_path / "out", loaded=loaded, formats=["pfm"])
    assert summary.predicted == 2
    assert [p.name for p, _ in summary.skipped] == ["broken.png"]
    assert (tmp_path / "out" / "a.pfm").exists()
    assert (tmp_path / "out" / "sub" / "b.pfm").exists()
    assert not summary.ok


def test_same_stem_inputs_keep_their_extension(tmp_path):
    for name in ("x.png", "x.jpg"):
        (tmp_path / name).write_bytes(b"")
    stems = [str(stem) for _, stem in collect_inputs([tmp_path / "x.png", tmp_path / "x.jpg"])]
    assert stems == ["x_png", "x_jpg"]


def test_existing_outputs_are_never_replaced_without_overwrite(tmp_path, loaded):
    out = tmp_path / "out"
    out.mkdir()
    (out / "tiny_48x64.pfm").write_bytes(b"precious")
    with pytest.raises(OutputExistsError, match="--overwrite"):
        predict([IMAGES / "tiny_48x64.png"], out, loaded=loaded, formats=["pfm", "png16"])
    assert (out / "tiny_48x64.pfm").read_bytes() == b"precious"
    assert not (out / "tiny_48x64.png").exists()  # the check happens before any work
    predict([IMAGES / "tiny_48x64.png"], out, loaded=loaded, formats=["pfm"], overwrite=True)
    assert read_pfm(out / "tiny_48x64.pfm").shape == (48, 64)


def test_an_output_never_replaces_an_input(tmp_path, loaded):
    image = tmp_path / "img.png"  # png16 output of img.png into the same folder is img.png
    cv2.imwrite(str(image), cv2.imread(str(IMAGES / "tiny_48x64.png")))
    before = image.read_bytes()
    with pytest.raises(OutputExistsError, match="inputs"):
        predict([image], tmp_path, loaded=loaded, formats=["png16"], overwrite=True)
    assert image.read_bytes() == before


def test_cli_predict_exit_codes(tmp_path, weights, capsys):
    good = tmp_path / "good.png"
    cv2.imwrite(str(good), cv2.imread(str(IMAGES / "tiny_48x64.png")))
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"")
    code = main(["predict", str(good), str(bad), "-o", str(tmp_path / "out"), "--weights",
                 str(weights), "--format", "pfm", "--quiet"])
    captured = capsys.readouterr()
    assert code == 1
    assert "1 image(s) predicted" in captured.out and "1 skipped" in captured.out
    assert "bad.png" in captured.err and "Traceback" not in captured.err
    code = main(["predict", str(good), "-o", str(tmp_path / "out"), "--weights", str(weights),
                 "--format", "pfm", "--quiet"])
    assert code == 4 and "--overwrite" in capsys.readouterr().err


def test_cli_unknown_format_is_a_one_line_error(tmp_path, weights, capsys):
    code = main(["predict", str(IMAGES / "tiny_48x64.png"), "-o", str(tmp_path), "--weights",
                 str(weights), "--format", "jpeg"])
    assert code == 4
    err = capsys.readouterr().err
    assert "pfm, png16, color" in err and len(err.strip().splitlines()) == 1


def test_cli_variants_lists_the_registry(capsys):
    assert main(["variants"]) == 0
    out = capsys.readouterr().out
    assert "dpt_beit_large_512" in out and "DPT_SwinV2_T_256" in out
    assert len(out.strip().splitlines()) == 2 + 13

