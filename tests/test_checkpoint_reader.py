"""Reading torch zip, legacy torch and safetensors files: layout without bytes, lazy tensors
equal to what torch/safetensors load, and one-line causes for files that are no checkpoint."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import zipfile
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from midaskit.checkpoint import (
    LazyTensor,
    TensorMeta,
    load_tensors,
    open_checkpoint,
    read_state_dict_meta,
)
from midaskit.errors import CheckpointFormatError, MidaskitError
from test_checkpoint_safety import torch_zip_parts, write_zip_checkpoint


def sample_state(*, zip_only: bool = False) -> OrderedDict:
    """Every dtype, a scalar, an empty tensor, a Parameter, and views sharing one storage."""
    g = torch.Generator().manual_seed(0)
    base = torch.randn(4, 6, generator=g)
    sd = OrderedDict()
    sd["conv.weight"] = torch.randn(2, 3, 3, 3, generator=g)
    sd["half"] = torch.randn(5, generator=g).half()
    sd["bf16"] = torch.randn(2, 3, generator=g).bfloat16()
    sd["double"] = torch.randn(3, generator=g).double()
    sd["long"] = torch.arange(6).reshape(2, 3)
    sd["int"] = torch.arange(-3, 3, dtype=torch.int32)
    sd["short"] = torch.arange(4, dtype=torch.int16)
    sd["char"] = torch.arange(-2, 2, dtype=torch.int8)
    sd["byte"] = torch.arange(250, 256, dtype=torch.uint8)
    sd["bool"] = torch.tensor([True, False, True])
    sd["complex"] = torch.randn(2, generator=g, dtype=torch.complex64)
    sd["scalar"] = torch.tensor(3.5)
    sd["empty"] = torch.zeros(0, 3)
    sd["param"] = torch.nn.Parameter(torch.randn(3, generator=g))
    sd["base"] = base
    sd["base.t"] = base.t()  # non-contiguous view of the same storage
    sd["base.row"] = base[2]  # storage offset
    sd["base.cols"] = base[1:, 1::2]  # offset and strides
    if zip_only:  # rebuilt by _rebuild_tensor_v3 over an untyped byte storage
        sd["f8"] = torch.randn(4, generator=g).to(torch.float8_e4m3fn)
        sd["u16"] = torch.arange(65530, 65536, dtype=torch.int32).to(torch.uint16)
    return sd


def assert_same(loaded: dict, reference: dict) -> None:
    assert list(loaded) == list(reference)
    for key, ref in reference.items():
        got = loaded[key]
        assert got.dtype == ref.dtype and got.shape == ref.shape, key
        assert got.stride() == ref.stride() and got.storage_offset() == ref.storage_offset(), key
        if ref.dtype in (torch.float8_e4m3fn, torch.uint16):
            got, ref = got.to(torch.float32), ref.to(torch.float32)
        assert torch.equal(got, ref.detach()), key


@pytest.fixture
def torch_files(tmp_path: Path) -> dict[str, Path]:
    zip_path, legacy_path = tmp_path / "model.pt", tmp_path / "legacy.pth"
    torch.save(sample_state(zip_only=True), zip_path)
    torch.save(sample_state(), legacy_path, _use_new_zipfile_serialization=False)
    return {"torch-zip": zip_path, "torch-legacy": legacy_path}


@pytest.mark.parametrize("fmt", ["torch-zip", "torch-legacy"])
def test_torch_formats_match_torch_load(torch_files: dict[str, Path], fmt: str) -> None:
    path = torch_files[fmt]
    reference = torch.load(path, weights_only=True)
    loaded = load_tensors(path)
    assert_same(loaded, reference)
    # views of one storage share memory, as with torch.load
    base_ptr = loaded["base"].untyped_storage().data_ptr()
    assert loaded["base.t"].untyped_storage().data_ptr() == base_ptr
    assert loaded["base.cols"].untyped_storage().data_ptr() == base_ptr
    with open_checkpoint(path) as ckpt:
        assert ckpt.format == fmt and ckpt.unsafe_globals == () and ckpt.metadata == {}
        assert ckpt.file_size == path.stat().st_size


def test_safetensors_matches_safetensors_load(tmp_path: Path) -> None:
    state = {k: v.detach().contiguous().clone() for k, v in sample_state().items()}
    path = tmp_path / "model.safetensors"
    save_file(state, path, metadata={"format": "pt", "source": "test"})
    assert_same(load_tensors(path), load_file(path))
    with open_checkpoint(path) as ckpt:
        assert ckpt.format == "safetensors"
        assert ckpt.metadata == {"format": "pt", "source": "test"}
        assert all(isinstance(t, LazyTensor) for t in ckpt.root.values())


def test_metadata_without_torch_in_a_fresh_process(tmp_path: Path, torch_files) -> None:
    st_path = tmp_path / "model.safetensors"
    save_file({"a.weight": torch.zeros(2, 3, dtype=torch.bfloat16)}, st_path)
    paths = [str(torch_files["torch-zip"]), str(torch_files["torch-legacy"]), str(st_path)]
    script = (
        "import json, sys\n"
        "from midaskit.checkpoint import read_state_dict_meta\n"
        "out = {p: {k: [list(m.shape), m.dtype] for k, m in read_state_dict_meta(p).items()}"
        " for p in sys.argv[1:]}\n"
        "out['torch imported'] = 'torch' in sys.modules\n"
        "print(json.dumps(out))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, *paths], capture_output=True, text=True, check=True
    )
    out = json.loads(result.stdout)
    assert out["torch imported"] is False
    state = sample_state(zip_only=True)
    expected = {k: [list(v.shape), str(v.dtype).removeprefix("torch.")] for k, v in state.items()}
    assert out[paths[0]] == expected
    assert out[paths[1]] == {k: v for k, v in expected.items() if k not in ("f8", "u16")}
    assert out[paths[2]] == {"a.weight": [[2, 3], "bfloat16"]}


def test_meta_and_lazy_tensor_fields(torch_files) -> None:
    meta = read_state_dict_meta(torch_files["torch-zip"])
    assert meta["conv.weight"] == TensorMeta((2, 3, 3, 3), "float32")
    assert meta["bf16"].nbytes == 12 and meta["scalar"].shape == ()
    with open_checkpoint(torch_files["torch-zip"]) as ckpt:
        view = ckpt.root["base.cols"]
        assert (view.shape, view.stride, view.storage_offset) == ((3, 3), (6, 2), 7)
        assert not view.is_contiguous() and ckpt.root["base"].is_contiguous()
        assert view.nbytes == 36 and view.meta == TensorMeta((3, 3), "float32")
        assert view.storage is ckpt.root["base"].storage


def test_materialized_tensors_never_write_to_the_file(torch_files) -> None:
    path = torch_files["torch-zip"]
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    tensors = load_tensors(path)
    tensors["base"].fill_(7.0)  # copy-on-write pages: the tensor changes, the file does not
    assert tensors["base.t"][0, 0] == 7.0
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before


def test_closed_checkpoint_refuses_to_materialize(torch_files) -> None:
    with open_checkpoint(torch_files["torch-zip"]) as ckpt:
        kept = ckpt.root["base"].materialize()
        lazy = ckpt.root["conv.weight"]
    assert kept.sum().item() == pytest.approx(sample_state()["base"].sum().item())
    with pytest.raises(MidaskitError, match="closed"):
        lazy.materialize()


def test_big_endian_archive(tmp_path: Path) -> None:
    state = {"w": torch.randn(3, 4), "h": torch.randn(5).half(), "i": torch.arange(3)}
    pkl, storages = torch_zip_parts(state)
    itemsizes = {"w": 4, "h": 2, "i": 8}
    by_key = dict(zip(sorted(storages), state, strict=True))  # keys "0", "1", "2" in save order
    swapped = {
        key: b"".join(
            data[i : i + itemsizes[by_key[key]]][::-1]
            for i in range(0, len(data), itemsizes[by_key[key]])
        )
        for key, data in storages.items()
    }
    path = write_zip_checkpoint(tmp_path / "big.pt", pkl, swapped, byteorder="big")
    assert_same(load_tensors(path), torch.load(path, weights_only=True))
    assert_same(load_tensors(path), state)


def test_gpu_storage_types_load_on_cpu(tmp_path: Path) -> None:
    pkl, storages = torch_zip_parts({"w": torch.arange(4.0)})
    pkl = pkl.replace(b"ctorch\nFloatStorage\n", b"ctorch.cuda\nFloatStorage\n")
    path = write_zip_checkpoint(tmp_path / "gpu.pt", pkl, storages)
    assert torch.equal(load_tensors(path)["w"], torch.arange(4.0))


def test_unaligned_members_are_copied_correctly(tmp_path: Path) -> None:
    state = {"a": torch.arange(5, dtype=torch.int64), "b": torch.randn(7)}
    pkl, storages = torch_zip_parts(state)
    path = write_zip_checkpoint(tmp_path / "unaligned.pt", pkl, storages)  # zipfile: no padding
    assert_same(load_tensors(path), state)


def test_nested_container_is_unwrapped_for_meta(tmp_path: Path) -> None:
    path = tmp_path / "wrapped.ckpt"
    torch.save({"epoch": 3, "model": {"layer.weight": torch.zeros(4, 2)}}, path)
    assert read_state_dict_meta(path) == {"layer.weight": TensorMeta((4, 2))}


# -- files that are not checkpoints --------------------------------------------------------------


def _truncated_copy(src: Path, dst: Path, keep: float = 0.5) -> Path:
    data = src.read_bytes()
    dst.write_bytes(data[: int(len(data) * keep)])
    return dst


def _safetensors_bytes(header: dict, data: bytes) -> bytes:
    raw = json.dumps(header).encode()
    return len(raw).to_bytes(8, "little") + raw + data


BROKEN = {
    # name: (tmp_path, torch_files -> path, a phrase the message must contain)
    "missing": (lambda d, f: d / "nope.pt", "no such file"),
    "directory": (lambda d, f: d, "is a directory"),
    "empty": (lambda d, f: _write(d / "e.pt", b""), "empty file"),
    "truncated zip": (
        lambda d, f: _truncated_copy(f["torch-zip"], d / "cut.pt"),
        "download was probably interrupted",
    ),
    "truncated legacy": (
        lambda d, f: _truncated_copy(f["torch-legacy"], d / "cut.pth", 0.8),
        "truncated",
    ),
    "random bytes": (
        lambda d, f: _write(d / "r.pt", bytes(range(7, 250)) * 8),
        "not a torch or safetensors checkpoint",
    ),
    "git lfs pointer": (
        lambda d, f: _write(
            d / "lfs.pt",
            b"version https://git-lfs.github.com/spec/v1\noid sha256:501f0c75b3bca7da\n"
            b"size 492757791\n",
        ),
        "git lfs pull",
    ),
    "html doctype": (
        lambda d, f: _write(d / "h.pt", b"\n<!DOCTYPE html><html><body>Sign in</body></html>"),
        "error or login page",
    ),
    "html tag": (lambda d, f: _write(d / "h2.pt", b"<html><head>"), "HTML page"),
    "hf incomplete": (
        lambda d, f: _truncated_copy(f["torch-zip"], d / "0a1b2c.incomplete"),
        "unfinished download",
    ),
    "browser part": (
        lambda d, f: _truncated_copy(f["torch-zip"], d / "dpt_large.pt.part"),
        "unfinished download",
    ),
    "chrome crdownload": (
        lambda d, f: _write(d / "m.pt.crdownload", b"PK\x03\x04"),
        "unfinished download",
    ),
    "zip without data.pkl": (
        lambda d, f: _zip(d / "z.pt", {"readme.txt": b"hi"}),
        "not a torch checkpoint (no data.pkl",
    ),
    "npz": (lambda d, f: _zip(d / "a.npz", {"x.npy": b"\x93NUMPY"}), "NumPy .npz"),
    "compressed storage": (
        lambda d, f: write_zip_checkpoint(
            d / "c.pt", *torch_zip_parts({"w": torch.zeros(64)}), compress_storages=True
        ),
        "compressed",
    ),
    "plain pickle": (lambda d, f: _write(d / "p.pt", b"\x80\x04}\x94."), "plain Python pickle"),
    "gzip": (lambda d, f: _write(d / "g.pt", b"\x1f\x8b\x08\x00" + bytes(40)), "gunzip"),
    "json error": (
        lambda d, f: _write(d / "j.pt", b'{"error":"Entry not found"}'),
        "JSON document",
    ),
    "safetensors truncated": (
        lambda d, f: _write(
            d / "t.safetensors",
            _safetensors_bytes({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, b""),
        ),
        "truncated",
    ),
    "safetensors overlap": (
        lambda d, f: _write(
            d / "o.safetensors",
            _safetensors_bytes(
                {
                    "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                    "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]},
                },
                bytes(12),
            ),
        ),
        "overlaps",
    ),
    "safetensors gap": (
        lambda d, f: _write(
            d / "g.safetensors",
            _safetensors_bytes(
                {"a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}, bytes(8)
            ),
        ),
        "gap",
    ),
    "safetensors wrong size": (
        lambda d, f: _write(
            d / "w.safetensors",
            _safetensors_bytes(
                {"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, bytes(8)
            ),
        ),
        "8 bytes for a float32 tensor of shape (3,)",
    ),
    "safetensors huge header": (
        lambda d, f: _write(d / "h.safetensors", (200_000_000).to_bytes(8, "little") + b"{}"),
        "header claims 200,000,000 bytes",
    ),
    "safetensors bad dtype": (
        lambda d, f: _write(
            d / "d.safetensors",
            _safetensors_bytes({"a": {"dtype": "Q7", "shape": [1], "data_offsets": [0, 1]}}, b"x"),
        ),
        "unsupported safetensors dtype",
    ),
}


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_broken_input_names_the_cause(case: str, tmp_path: Path, torch_files) -> None:
    make, phrase = BROKEN[case]
    folder = tmp_path / "case"
    folder.mkdir()
    path = make(folder, torch_files)
    with pytest.raises(CheckpointFormatError) as err:
        read_state_dict_meta(path)
    message = str(err.value)
    assert phrase in message
    assert "\n" not in message and str(path) in message


def test_lfs_pointer_reports_the_real_size(tmp_path: Path) -> None:
    path = _write(tmp_path / "m.pt", b"version https://git-lfs.github.com/spec/v1\nsize 1234567\n")
    with pytest.raises(CheckpointFormatError, match="1,234,567 bytes"):
        open_checkpoint(path)


def test_unzipped_checkpoint_folder_is_recognised(tmp_path: Path) -> None:
    (tmp_path / "data.pkl").write_bytes(b"")
    with pytest.raises(CheckpointFormatError, match="unzipped torch checkpoint"):
        open_checkpoint(tmp_path)


def test_bad_mode_is_refused(torch_files) -> None:
    with pytest.raises(MidaskitError, match="mode"):
        open_checkpoint(torch_files["torch-zip"], mode="trusting")  # type: ignore[arg-type]
