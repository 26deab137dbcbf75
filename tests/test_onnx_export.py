"""``midaskit export --onnx``: onnxruntime against PyTorch and the official reference output.

CI exports the small variants (two with dynamic height/width, two fixed-size ones with a dynamic
batch) and tiny configurations of every DPT backbone that runs at any size (dynamic height and
width checked at three sizes); ``MIDASKIT_ONNX_ALL=1`` exports all 13 (about 20 minutes on 2
cores), which is how the table in docs/interop.md was measured.
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import pytest
import torch

from conftest import REFERENCE, VARIANT_NAMES
from midaskit.cli.main import main
from midaskit.errors import OutputExistsError, UnsupportedInputSizeError
from midaskit.interop.deps import MissingExtraError
from midaskit.interop.onnx_export import (
    ONNX_TOLERANCE_OVER_STD,
    check_onnx,
    export_model,
    export_onnx,
)
from test_backbone_beit import _tiny_model as tiny_beit_dpt
from test_backbone_next_vit import _tiny_dpt as tiny_next_vit_dpt
from test_backbone_vit import tiny_hybrid_dpt, tiny_vit_dpt

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

# variant -> the dynamic axes a --dynamic export gets
SMALL = {
    "midas_v21_small_256": ["batch", "height", "width"],
    "dpt_levit_224": ["batch"],  # native size only
    "dpt_swin2_tiny_256": ["batch"],  # native size only
    "dpt_next_vit_large_384": ["batch", "height", "width"],  # the smallest DPT with dynamic sizes
}


def _official_error(path, variant: str) -> float:
    """ONNX depth on the reference input vs the official output, over the output's std."""
    x = np.load(REFERENCE / "expected" / f"input_{variant}.npy")
    expected = np.load(REFERENCE / "expected" / f"output_{variant}.npy")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    depth = session.run(["depth"], {"image": x})[0]
    assert depth.shape == expected.shape
    return float(np.abs(depth - expected).max() / expected.std())


@pytest.mark.parametrize("variant", sorted(SMALL))
def test_dynamic_export_matches_pytorch_and_the_official_output(variant, reference_checkpoint,
                                                                tmp_path, capsys):
    out = tmp_path / f"{variant}.onnx"
    args = ["export", str(reference_checkpoint(variant)), "--onnx", str(out), "--dynamic",
            "--json"]
    assert main(args) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["variant"] == variant and report["dynamic"] == SMALL[variant]
    assert len(report["errors"]) == 2  # the traced shape and a batch of 2 (at another size)
    assert max(report["errors"].values()) < ONNX_TOLERANCE_OVER_STD
    err = _official_error(out, variant)
    with capsys.disabled():
        print(f"\n[onnx] {variant}: onnxruntime vs PyTorch {report['errors']}, "
              f"vs official {err:.2e}")
    assert err < ONNX_TOLERANCE_OVER_STD


TINY_DPTS = {
    "vit": tiny_vit_dpt,
    "hybrid": lambda: tiny_hybrid_dpt(seed=4),  # seed 0's depth is all zero after the ReLU
    "beit": tiny_beit_dpt,
    "next_vit": tiny_next_vit_dpt,
}
DYNAMIC = {"image": {0: "batch", 2: "height", 3: "width"},
           "depth": {0: "batch", 1: "height", 2: "width"}}


@pytest.mark.parametrize("family", sorted(TINY_DPTS))
def test_dpt_graph_keeps_height_and_width_symbolic(family):
    """Traced at 64x64 (the native grid, where the eager model takes its identity shortcuts), the
    graph must be right at other and non-square sizes: position embeddings, BEiT's bias tables
    and index, SAME padding and the fusion blocks' resize targets computed from the input."""
    model = TINY_DPTS[family]()
    graph = export_model(model, height=64, width=64, axes=DYNAMIC)
    gen = torch.Generator().manual_seed(1)
    inputs = [torch.randn(*shape, generator=gen)
              for shape in [(1, 3, 64, 64), (2, 3, 128, 96), (1, 3, 96, 160)]]
    errors = check_onnx(graph, model, inputs)
    assert list(errors) == ["1x64x64", "2x128x96", "1x96x160"]
    assert max(errors.values()) < ONNX_TOLERANCE_OVER_STD, errors


def test_fixed_size_variant_refuses_another_size(reference_checkpoint, tmp_path):
    with pytest.raises(UnsupportedInputSizeError, match="224x224"):
        export_onnx(reference_checkpoint("dpt_levit_224"), tmp_path / "x.onnx", height=256,
                    width=256)
    assert not list(tmp_path.iterdir())


def test_existing_output_is_kept(reference_checkpoint, tmp_path):
    out = tmp_path / "x.onnx"
    out.write_bytes(b"keep")
    with pytest.raises(OutputExistsError):
        export_onnx(reference_checkpoint("midas_v21_small_256"), out)
    assert out.read_bytes() == b"keep"


def test_missing_onnx_names_the_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "onnx", None)
    with pytest.raises(MissingExtraError, match=r"pip install 'midaskit\[onnx\]'"):
        export_onnx(tmp_path / "missing.pt", tmp_path / "x.onnx")


@pytest.mark.skipif(not os.environ.get("MIDASKIT_ONNX_ALL"), reason="set MIDASKIT_ONNX_ALL=1")
@pytest.mark.parametrize("variant", VARIANT_NAMES)
def test_every_variant_exports(variant, reference_checkpoint, tmp_path, capsys):
    out = tmp_path / f"{variant}.onnx"
    report = export_onnx(reference_checkpoint(variant), out, dynamic=True)
    err = _official_error(out, variant)
    with capsys.disabled():
        print(f"\n[onnx] {variant}: dynamic {report.dynamic}, onnxruntime vs PyTorch "
              f"{report.errors}, vs official {err:.2e} {report.notes}")
    assert err < ONNX_TOLERANCE_OVER_STD
