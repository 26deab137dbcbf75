"""Deterministic official-layout state dicts for tests: the documented "midas-ref-weights/v1"
formula of the reference data, re-implemented in numpy uint32 arithmetic (wraps mod 2**32).

Per key: ``d = sha256("midas-ref-weights/v1/seed=S/KEY")``, ``k0, k1`` the first two
little-endian uint32 words; element i gets ``h = mix32(mix32(i ^ k0) ^ k1)``,
``u = 2 * (h >> 8) / 2**24 - 1`` and the value ``float32(c + a * u)`` with ``(c, a)`` set by the
entry's module kind and name. Derived buffers are computed from their rule, never random.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from collections import OrderedDict
from pathlib import Path

import numpy as np

DATA = Path(__file__).parent / "data" / "reference"
TAG = "midas-ref-weights/v1"
_BRANCH_OUT = re.compile(r"(^|\.)(mhca\.projection|mlp\.conv2|e_mhsa\.proj)\.weight$")
_OTHER = {
    "pos_embed": (0.0, 0.3),
    "cls_token": (0.0, 0.5),
    "dist_token": (0.0, 0.5),
    "relative_position_bias_table": (0.0, 0.5),
    "attention_biases": (0.0, 0.5),
    "gamma": (0.3, 0.2),
    "gamma_1": (0.3, 0.2),
    "gamma_2": (0.3, 0.2),
    "logit_scale": (math.log(10.0), 0.5),
    "q_bias": (0.0, 0.05),
    "v_bias": (0.0, 0.05),
}


def load_manifest(variant: str) -> dict:
    return json.loads((DATA / "manifests" / f"{variant}.json").read_text())


def _mix32(x: np.ndarray) -> np.ndarray:
    x ^= x >> np.uint32(16)
    x *= np.uint32(0x7FEB352D)
    x ^= x >> np.uint32(15)
    x *= np.uint32(0x846CA68B)
    x ^= x >> np.uint32(16)
    return x


def uniform_pm1(seed: int, key: str, numel: int) -> np.ndarray:
    d = hashlib.sha256(f"{TAG}/seed={seed}/{key}".encode()).digest()
    k0 = np.uint32(int.from_bytes(d[0:4], "little"))
    k1 = np.uint32(int.from_bytes(d[4:8], "little"))
    h = _mix32(_mix32(np.arange(numel, dtype=np.uint32) ^ k0) ^ k1)
    return (h >> np.uint32(8)).astype(np.float64) * (2.0**-23) - 1.0


def _fan_in(entry: dict) -> float:
    shape = entry["shape"]
    if entry["module_kind"] == "conv_transpose":
        attrs = entry["module_attrs"]
        taps = math.prod(attrs["kernel_size"]) / math.prod(attrs["stride"])
        return max(shape[0] / attrs["groups"] * taps, 1.0)
    return float(math.prod(shape[1:]))


def _rule(entry: dict) -> tuple[float, float, bool]:
    name = entry["key"].rsplit(".", 1)[-1]
    kind = entry["module_kind"]
    if kind == "batchnorm":
        return {"weight": (1.0, 0.1, False), "bias": (0.0, 0.05, False),
                "running_mean": (0.0, 0.1, False), "running_var": (1.0, 0.25, False)}[name]
    if kind == "norm":
        return {"weight": (1.0, 0.1, False), "bias": (0.0, 0.05, False)}[name]
    if kind in ("conv", "linear", "conv_transpose"):
        if name == "bias":
            return (0.0, 0.05, False)
        a = math.sqrt(3.0 / _fan_in(entry))
        if _BRANCH_OUT.search(entry["key"]):
            a *= 0.25
        return (0.0, a, kind == "conv" and entry["shape"][0] == 1)
    c, a = _OTHER.get(name, (0.0, 0.1))
    return (c, a, False)


# ---- derived buffers --------------------------------------------------------------------------

def _grid(h: int, w: int, step: int = 1) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.meshgrid(np.arange(0, h, step), np.arange(0, w, step), indexing="ij")
    return yy.reshape(-1).astype(np.int64), xx.reshape(-1).astype(np.int64)


def _swin_index(wh: int, ww: int) -> np.ndarray:
    y, x = _grid(wh, ww)
    return (y[:, None] - y[None, :] + wh - 1) * (2 * ww - 1) + (x[:, None] - x[None, :] + ww - 1)


def derive(entry: dict) -> np.ndarray:
    d = entry["derivation"]
    rule = d["rule"]
    if rule == "constant":
        return np.full(entry["shape"], d["value"], dtype=np.dtype(entry["dtype"]))
    if rule == "swin_relative_position_index":
        return _swin_index(*d["window_size"])
    if rule == "beit_relative_position_index":
        wh, ww = d["window_size"]
        r = (2 * wh - 1) * (2 * ww - 1) + 3
        out = np.zeros((wh * ww + 1,) * 2, dtype=np.int64)
        out[1:, 1:] = _swin_index(wh, ww)
        out[0, :], out[:, 0], out[0, 0] = r - 3, r - 2, r - 1
        return out
    if rule == "swin_attn_mask":
        (H, W), (wh, ww), (sh, sw) = d["input_resolution"], d["window_size"], d["shift_size"]

        def region(n: int, win: int, shift: int) -> np.ndarray:
            v = np.arange(n)
            return np.where(v < n - win, 0, np.where(v < n - shift, 1, 2))

        label = region(H, wh, sh)[:, None] * 3 + region(W, ww, sw)[None, :]
        win = label.reshape(H // wh, wh, W // ww, ww).transpose(0, 2, 1, 3).reshape(-1, wh * ww)
        return np.where(win[:, None, :] != win[:, :, None], -100.0, 0.0).astype(np.float32)
    if rule == "levit_attention_bias_idxs":
        R, s = d["resolution"], d["stride"]
        yk, xk = _grid(R, R)
        yq, xq = _grid(R, R, s)
        return np.abs(yq[:, None] - yk[None, :]) * R + np.abs(xq[:, None] - xk[None, :])
    raise KeyError(f"unknown derivation rule {rule!r}")


def make_state_dict(variant: str, seed: int = 0) -> "OrderedDict[str, object]":
    """The official-layout state dict of ``variant`` as torch tensors, in manifest order."""
    import torch

    sd: OrderedDict[str, object] = OrderedDict()
    for e in load_manifest(variant)["entries"]:
        if e["derived"]:
            arr = np.array(derive(e), dtype=np.dtype(e["dtype"]), order="C")
            if hashlib.sha256(arr.tobytes()).hexdigest() != e["sha256"]:
                raise AssertionError(f"derived {e['key']} does not match the manifest sha256")
        else:
            c, a, use_abs = _rule(e)
            u = uniform_pm1(seed, e["key"], math.prod(e["shape"]))
            if use_abs:
                u = np.abs(u)
            arr = (c + a * u).astype(np.float32).reshape(e["shape"])
        sd[e["key"]] = torch.from_numpy(arr)
    return sd


def cache_dir() -> Path:
    root = os.environ.get("MIDASKIT_TEST_CACHE")
    default = Path(__file__).resolve().parent.parent / ".cache" / "test-weights"
    path = Path(root) if root else default
    path.mkdir(parents=True, exist_ok=True)
    return path


def reference_checkpoint(variant: str, seed: int = 0) -> Path:
    """Path of a ``torch.save``d official-layout file for ``variant``, generated once and cached."""
    import torch

    manifest = (DATA / "manifests" / f"{variant}.json").read_bytes()
    manifest_hash = hashlib.sha256(manifest).hexdigest()
    path = cache_dir() / f"{variant}_seed{seed}_{manifest_hash[:10]}.pt"
    if not path.exists():
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        torch.save(make_state_dict(variant, seed), tmp)
        os.replace(tmp, path)
    return path
