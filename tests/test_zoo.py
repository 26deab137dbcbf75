"""The zoo against the official reference: layout on ``meta``, derived buffers, strict loading
and forward equivalence, parametrised over the whole registry."""

from __future__ import annotations

import hashlib
import time

import numpy as np
import pytest
import torch

import refweights
from conftest import REFERENCE, VARIANT_NAMES
from midaskit.models.derived import iter_derived_buffers, materialize_derived_buffers
from midaskit.variants import build_model, get_variant

# float32 forward must match the official output within this fraction of the output's std
TOLERANCE_OVER_STD = 1e-3


def _tensor_sha256(t: torch.Tensor) -> str:
    return hashlib.sha256(t.detach().contiguous().cpu().numpy().tobytes()).hexdigest()


@pytest.mark.parametrize("variant", VARIANT_NAMES)
def test_meta_state_dict_is_the_official_layout(variant):
    manifest = refweights.load_manifest(variant)
    model = build_model(variant, device="meta")
    ours = [(k, tuple(v.shape), str(v.dtype).removeprefix("torch."))
            for k, v in model.state_dict().items()]
    official = [(e["key"], tuple(e["shape"]), e["dtype"]) for e in manifest["entries"]]
    assert [k for k, *_ in ours] == [k for k, *_ in official]
    assert ours == official
    assert sum(p.numel() for p in model.parameters()) == manifest["num_params"]
    buffers = {k for k, _ in model.named_buffers()} & {e["key"] for e in manifest["entries"]}
    assert buffers == {e["key"] for e in manifest["entries"] if e["kind"] == "buffer"}


@pytest.mark.parametrize("variant", VARIANT_NAMES)
def test_derived_buffers_equal_the_official_values(variant):
    manifest = refweights.load_manifest(variant)
    model = build_model(variant, device="meta")
    ours = {key: value for key, _, _, value in iter_derived_buffers(model)}
    for entry in manifest["entries"]:
        if entry["derived"]:
            assert entry["key"] in ours, f"{entry['key']} cannot be regenerated"
            value = ours[entry["key"]].to(getattr(torch, entry["dtype"]))
            assert list(value.shape) == entry["shape"]
            assert _tensor_sha256(value) == entry["sha256"], entry["key"]


@pytest.mark.slow
@pytest.mark.parametrize("variant", VARIANT_NAMES)
def test_forward_equals_official_output(variant, reference_checkpoint, capsys):
    spec = get_variant(variant)
    state = torch.load(reference_checkpoint(variant), map_location="cpu", weights_only=True,
                       mmap=True)
    model = build_model(spec, device="meta")
    model.load_state_dict(state, strict=True, assign=True)
    materialize_derived_buffers(model)
    x = torch.from_numpy(np.load(REFERENCE / "expected" / f"input_{variant}.npy"))
    expected = np.load(REFERENCE / "expected" / f"output_{variant}.npy")
    with torch.inference_mode():
        start = time.perf_counter()
        first = model(x).numpy()  # each weight's first use: the direct kernels
        seconds = time.perf_counter() - start
        out = model(x).numpy()  # from the second on: packed linears, Winograd convolutions
    assert first.shape == out.shape == expected.shape
    err_first = float(np.abs(first - expected).max() / expected.std())
    err = float(np.abs(out - expected).max() / expected.std())
    with capsys.disabled():
        print(f"\n[equivalence] {variant}: max|err|/std = {err:.2e} "
              f"(first forward {err_first:.2e}, {seconds:.2f} s)")
    assert err_first < TOLERANCE_OVER_STD
    assert err < TOLERANCE_OVER_STD
