"""Hostile and malformed pickles: refused in strict mode, inert in inspect mode, never run.

Every payload is built here in ``tmp_path`` (no binaries are committed). Each would create a
marker file if executed; a control run with the stdlib/torch unpickler proves it really does, and
then our reader must leave no marker behind.
"""

from __future__ import annotations

import argparse
import importlib
import io
import os
import pickle
import subprocess
import sys
import time
import zipfile
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch

from midaskit.checkpoint import find_state_dict, open_checkpoint
from midaskit.checkpoint.lazy import BufferReader
from midaskit.checkpoint.safe_pickle import Placeholder, safe_load
from midaskit.errors import CheckpointFormatError, UnsafeCheckpointError

EVILMOD = '''
import pathlib
import torch


class Evil:
    """Runs code when unpickled: BUILD calls __setstate__."""

    def __init__(self, marker):
        self.marker = marker

    def __setstate__(self, state):
        pathlib.Path(state["marker"]).touch()
        self.__dict__.update(state)


class EvilNet(torch.nn.Module):
    """A whole pickled model whose class runs code when unpickled."""

    def __init__(self, marker):
        super().__init__()
        self.marker = marker
        self.conv = torch.nn.Conv2d(1, 2, 3)
        self.norm = torch.nn.BatchNorm2d(2)
        self.register_buffer("scratch", torch.zeros(2), persistent=False)

    def __setstate__(self, state):
        pathlib.Path(state["marker"]).touch()
        super().__setstate__(state)
'''


# -- helpers shared with test_checkpoint_reader ---------------------------------------------------


def write_zip_checkpoint(
    path: Path,
    data_pkl: bytes,
    storages: dict[str, bytes] | None = None,
    *,
    byteorder: str | None = "little",
    compress_storages: bool = False,
) -> Path:
    """A torch-zip archive written by hand: ``archive/data.pkl`` and ``archive/data/<key>``."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("archive/data.pkl", data_pkl)
        if byteorder is not None:
            zf.writestr("archive/byteorder", byteorder)
        for key, data in (storages or {}).items():
            method = zipfile.ZIP_DEFLATED if compress_storages else zipfile.ZIP_STORED
            zf.writestr(f"archive/data/{key}", data, compress_type=method)
        zf.writestr("archive/version", "3\n")
    return path


def torch_zip_parts(obj: object) -> tuple[bytes, dict[str, bytes]]:
    """``data.pkl`` and the storages of ``torch.save(obj)``."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    with zipfile.ZipFile(buf) as zf:
        names = zf.namelist()
        prefix = next(n for n in names if n.endswith("/data.pkl"))[: -len("data.pkl")]
        storages = {
            n[len(prefix) + 5 :]: zf.read(n) for n in names if n.startswith(f"{prefix}data/")
        }
        return zf.read(f"{prefix}data.pkl"), storages


class FakeStorage:
    """Pickled as a storage persistent id with whatever numel we like."""

    def __init__(self, key: str, numel: int, storage_type: str = "FloatStorage") -> None:
        self.key, self.numel, self.storage_type = key, numel, storage_type


class TensorRecord:
    """Pickled exactly as torch pickles a tensor, with arbitrary (possibly hostile) fields."""

    def __init__(self, storage: FakeStorage, offset: int, size: tuple, stride: tuple) -> None:
        self.args = (storage, offset, size, stride, False, OrderedDict())

    def __reduce__(self):
        return (torch._utils._rebuild_tensor_v2, self.args)


class _TorchLikePickler(pickle.Pickler):
    def persistent_id(self, obj: object) -> object:
        if isinstance(obj, FakeStorage):
            stype = getattr(torch, obj.storage_type)
            return ("storage", stype, obj.key, "cpu", obj.numel)
        return None


def tensor_pickle(obj: object) -> bytes:
    buf = io.BytesIO()
    _TorchLikePickler(buf, protocol=2).dump(obj)
    return buf.getvalue()


# -- payloads -------------------------------------------------------------------------------------


class Call:
    """Pickles as ``func(*args)``: what a hostile object's ``__reduce__`` returns."""

    def __init__(self, func: object, *args: object) -> None:
        self.func, self.args = func, args

    def __reduce__(self):
        return (self.func, self.args)

    def __call__(self, *args: object) -> None:  # so a Call can be the callable of another
        raise AssertionError("never called")


def _cmd(marker: Path) -> str:
    return f"touch {marker}"


def _short(op: bytes, text: str) -> bytes:
    data = text.encode()
    return op + bytes([len(data)]) + data


PAYLOADS = {
    # name: (marker -> pickle bytes, globals the reader must name)
    "os.system by GLOBAL": (
        lambda m: b"\x80\x02cos\nsystem\n" + _short(b"U", _cmd(m)) + b"\x85R.",
        {"os.system"},
    ),
    "posix.system": (lambda m: pickle.dumps(Call(os.system, _cmd(m)), 2), {"posix.system"}),
    "builtins.eval": (
        lambda m: pickle.dumps(Call(eval, f"__import__('pathlib').Path({str(m)!r}).touch()"), 2),
        {"builtins.eval"},
    ),
    "builtins.exec": (
        lambda m: pickle.dumps(Call(exec, f"import pathlib; pathlib.Path({str(m)!r}).touch()"), 2),
        {"builtins.exec"},
    ),
    "__import__ and getattr chain": (
        lambda m: pickle.dumps(
            Call(Call(getattr, Call(__import__, "os"), "system"), _cmd(m)), protocol=2
        ),
        {"builtins.__import__", "builtins.getattr"},
    ),
    "subprocess.Popen": (
        lambda m: pickle.dumps(Call(subprocess.Popen, ["touch", str(m)]), 2),
        {"subprocess.Popen"},
    ),
    "nested REDUCE": (
        lambda m: pickle.dumps(Call(os.system, Call(eval, repr(_cmd(m)))), 2),
        {"posix.system", "builtins.eval"},
    ),
    "INST protocol 0": (
        lambda m: b"(S'" + _cmd(m).encode() + b"'\nios\nsystem\n.",
        {"os.system"},
    ),
    "OBJ protocol 1": (
        lambda m: b"(cos\nsystem\nS'" + _cmd(m).encode() + b"'\no.",
        {"os.system"},
    ),
    "STACK_GLOBAL behind memo": (
        lambda m: (
            b"\x80\x04"
            + _short(b"\x8c", "os")
            + b"\x94"
            + _short(b"\x8c", "system")
            + b"\x94"
            + b"00"  # pop both strings; fetch them back from the memo
            + b"h\x00h\x01\x93"
            + _short(b"\x8c", _cmd(m))
            + b"\x85R."
        ),
        {"os.system"},
    ),
}


@pytest.fixture(scope="module")
def evilmod(tmp_path_factory: pytest.TempPathFactory):
    """An importable module whose classes run code when unpickled."""
    folder = tmp_path_factory.mktemp("evil")
    (folder / "evilmod.py").write_text(EVILMOD)
    sys.path.insert(0, str(folder))
    try:
        yield importlib.import_module("evilmod")
    finally:
        sys.path.remove(str(folder))
        sys.modules.pop("evilmod", None)


def _assert_runs(marker: Path, load: object) -> None:
    """The control: a trusting unpickler really runs the payload (then we clean up)."""
    result = load()  # type: ignore[operator]
    if isinstance(result, subprocess.Popen):
        result.wait()
    assert marker.exists(), "the payload is not live; the test would prove nothing"
    marker.unlink()


def _assert_refused_and_inert(path: Path, marker: Path, expected: set[str]) -> None:
    with pytest.raises(UnsafeCheckpointError) as err:
        open_checkpoint(path)
    assert expected <= set(err.value.globals)
    for name in expected:
        assert name in str(err.value)
    assert "midaskit inspect" in str(err.value) and "state_dict()" in str(err.value)
    with open_checkpoint(path, mode="inspect") as ckpt:
        assert expected <= set(ckpt.unsafe_globals)
        found = find_state_dict(ckpt.root)
        weight = found.tensors["weight"].materialize().clone()
    time.sleep(0.05)  # a spawned process would have touched the marker by now
    assert not marker.exists(), "the payload ran"
    torch.testing.assert_close(weight, torch.arange(6.0).reshape(2, 3))


# -- the payloads, hidden in data.pkl of a zip checkpoint beside real tensors --------------------


@pytest.mark.parametrize("name", sorted(PAYLOADS))
def test_payload_in_zip_is_refused_and_never_runs(name: str, tmp_path: Path) -> None:
    build, expected = PAYLOADS[name]
    marker = tmp_path / "marker"
    payload = build(marker)
    _assert_runs(marker, lambda: pickle.loads(payload))

    state_pkl, storages = torch_zip_parts({"weight": torch.arange(6.0).reshape(2, 3)})
    # the payload runs first and is discarded (POP); the state dict follows and is the result
    data_pkl = payload[:-1] + b"0" + state_pkl
    path = write_zip_checkpoint(tmp_path / "hostile.pt", data_pkl, storages)
    _assert_refused_and_inert(path, marker, expected)


def test_payload_beside_tensors_saved_by_torch(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    obj = {"weight": torch.arange(6.0).reshape(2, 3), "evil": Call(os.system, _cmd(marker))}
    path = tmp_path / "mixed.pt"
    torch.save(obj, path)
    _assert_runs(marker, lambda: torch.load(path, weights_only=False))
    _assert_refused_and_inert(path, marker, {"posix.system"})
    with open_checkpoint(path, mode="inspect") as ckpt:
        found = find_state_dict(ckpt.root)
        assert found.non_tensor_entries == {"evil": "posix.system object (not loaded)"}
        assert ckpt.root["evil"].args == (_cmd(marker),)  # recorded, inert


def test_payload_in_legacy_format(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    obj = {"weight": torch.arange(6.0).reshape(2, 3), "evil": Call(os.system, _cmd(marker))}
    path = tmp_path / "legacy.pt"
    torch.save(obj, path, _use_new_zipfile_serialization=False)
    _assert_runs(marker, lambda: torch.load(path, weights_only=False))
    _assert_refused_and_inert(path, marker, {"posix.system"})
    assert open_checkpoint(path, mode="inspect").format == "torch-legacy"


def test_build_on_unknown_class(tmp_path: Path, evilmod) -> None:
    marker = tmp_path / "marker"
    obj = {"weight": torch.arange(6.0).reshape(2, 3), "cfg": evilmod.Evil(str(marker))}
    path = tmp_path / "build.pt"
    torch.save(obj, path)
    _assert_runs(marker, lambda: torch.load(path, weights_only=False))
    _assert_refused_and_inert(path, marker, {"evilmod.Evil"})
    with open_checkpoint(path, mode="inspect") as ckpt:
        cfg = ckpt.root["cfg"]
        assert isinstance(cfg, Placeholder) and cfg.qualname == "evilmod.Evil"
        assert cfg.state == {"marker": str(marker)}


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_pickled_module_lists_its_tensors(tmp_path: Path, evilmod, legacy: bool) -> None:
    marker = tmp_path / "marker"
    model = evilmod.EvilNet(str(marker))
    path = tmp_path / "model.pt"
    torch.save(model, path, _use_new_zipfile_serialization=not legacy)
    _assert_runs(marker, lambda: torch.load(path, weights_only=False))

    with pytest.raises(UnsafeCheckpointError) as err:
        open_checkpoint(path)
    assert {"evilmod.EvilNet", "torch.nn.modules.conv.Conv2d"} <= set(err.value.globals)
    with open_checkpoint(path, mode="inspect") as ckpt:
        found = find_state_dict(ckpt.root)
        assert found.module_class == "evilmod.EvilNet"
        expected = model.state_dict()
        assert list(found.tensors) == list(expected)  # order too; "scratch" is not persistent
        for key, tensor in found.tensors.items():
            torch.testing.assert_close(tensor.materialize(), expected[key])
    assert not marker.exists()


def test_realistic_training_extras_are_named(tmp_path: Path) -> None:
    """argparse.Namespace and numpy scalars beside the weights (torch 2.6 refuses these too)."""
    path = tmp_path / "train.pt"
    weights = {"weight": torch.arange(6.0).reshape(2, 3)}
    extras = {"args": argparse.Namespace(lr=0.1), "best": np.float64(2)}
    torch.save({"state_dict": weights, **extras}, path)
    with pytest.raises(UnsafeCheckpointError) as err:
        open_checkpoint(path)
    assert "argparse.Namespace" in err.value.globals
    assert any(g.startswith("numpy") for g in err.value.globals)
    with open_checkpoint(path, mode="inspect") as ckpt:
        found = find_state_dict(ckpt.root)
        assert found.path == ("state_dict",)
        assert found.extras["args"] == "argparse.Namespace object (not loaded)"
        assert ckpt.root["args"].state == {"lr": 0.1}


# -- malformed structures: CheckpointFormatError, never a crash or a huge allocation -------------


def _records(tmp_path: Path, record: TensorRecord, data: bytes = bytes(24)) -> Path:
    return write_zip_checkpoint(tmp_path / "bad.pt", tensor_pickle({"weight": record}), {"0": data})


@pytest.mark.parametrize(
    ("numel", "offset", "size", "stride", "cause"),
    [
        (6, 0, (10**12,), (1,), "reaches element"),  # enormous element count
        (6, 10**9, (2,), (1,), "reaches element"),  # storage offset out of range
        (6, 0, (2, 3), (3, 10**6), "reaches element"),  # stride walks off the end
        (6, 0, (2, -3), (3, 1), "negative"),
        (6, -1, (2,), (1,), "negative"),
        (6, 0, (2, 3), (1,), "do not match"),
        (10**15, 0, (2,), (1,), "should hold"),  # storage larger than the file
    ],
)
def test_out_of_range_records(tmp_path: Path, numel, offset, size, stride, cause) -> None:
    path = _records(tmp_path, TensorRecord(FakeStorage("0", numel), offset, size, stride))
    with pytest.raises(CheckpointFormatError, match=cause):
        open_checkpoint(path)


def test_storage_missing_from_archive(tmp_path: Path) -> None:
    record = TensorRecord(FakeStorage("7", 6), 0, (6,), (1,))
    path = write_zip_checkpoint(tmp_path / "bad.pt", tensor_pickle({"w": record}), {"0": bytes(24)})
    with pytest.raises(CheckpointFormatError, match="storage '7' is missing"):
        open_checkpoint(path)


def test_member_size_past_end_of_file(tmp_path: Path) -> None:
    pkl, storages = torch_zip_parts({"w": torch.zeros(4)})
    path = tmp_path / "lying.pt"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", pkl)
        zf.writestr("archive/data/0", storages["0"])
        for info in zf.filelist[1:]:  # the central directory claims a 1 GB member
            info.file_size = info.compress_size = 10**9
    with pytest.raises(CheckpointFormatError, match="truncated: member 'archive/data/0'"):
        open_checkpoint(path)


def test_deeply_nested_key_does_not_crash(tmp_path: Path) -> None:
    """Hashing a 100k-deep tuple overflows the C stack (a segfault); we refuse it first."""
    nested = b"\x80\x02)" + b"\x85" * 100_000  # (((...),),)
    data = b"\x80\x02}" + nested[2:] + b"NsN" + b"0" + b"}."  # {deep: None}; then a result
    path = write_zip_checkpoint(tmp_path / "deep.pt", data)
    with pytest.raises(CheckpointFormatError, match="nested too deeply"):
        open_checkpoint(path)


def test_deeply_nested_lists_are_read_without_recursion(tmp_path: Path) -> None:
    state_pkl, storages = torch_zip_parts({"weight": torch.arange(6.0).reshape(2, 3)})
    deep = b"\x80\x02" + b"]" * 200_000 + b"a" * 199_999  # [[[...]]], 200k deep
    path = write_zip_checkpoint(tmp_path / "deep.pt", deep + b"0" + state_pkl, storages)
    with open_checkpoint(path) as ckpt:
        assert list(find_state_dict(ckpt.root).tensors) == ["weight"]


def test_huge_memo_index_allocates_nothing(tmp_path: Path) -> None:
    # LONG_BINPUT 0xFFFFFFF0: the C unpickler would size its memo array to 2**33 entries
    state_pkl, storages = torch_zip_parts({"weight": torch.zeros(2)})
    data = b"\x80\x02N" + b"r\xf0\xff\xff\xff" + b"0" + state_pkl
    path = write_zip_checkpoint(tmp_path / "memo.pt", data, storages)
    with open_checkpoint(path) as ckpt:
        assert list(find_state_dict(ckpt.root).tensors) == ["weight"]


@pytest.mark.parametrize(
    ("data", "cause"),
    [
        (b"\x80\x02\x82\x01.", "extension codes"),  # EXT1: may bypass find_class via a cache
        (b"\x80\x02ccollections\nOrderedDict\n}X\x03\x00\x00\x00abcK\x01sb.", "BUILD"),
        (b"\x80\x02c__builtin__\nbytearray\n\x8a\x05\x00\x10\xa5\xd4\xe8\x85R.", "bytes"),
        (b"\x80\x02c_codecs\nencode\nX\x01\x00\x00\x00aX\x04\x00\x00\x00zlib\x86R.", "_codecs"),
        (b"\x80\x02X\x03\x00\x00\x00pidQ.", "persistent id"),
        (b"\x80\x02]q\x00(K\x01", "truncated"),
        (b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46", "truncated"),
    ],
    ids=["ext", "build-on-function", "bytearray-bomb", "codecs", "pid", "cut", "cut-long"],
)
def test_malformed_pickles(data: bytes, cause: str) -> None:
    with pytest.raises(CheckpointFormatError, match=cause):
        safe_load(BufferReader(data), source="x.pt")


def test_unsafe_error_wins_over_later_corruption() -> None:
    data = b"\x80\x02cos\nsystem\nU\x02lsK"  # a payload, then the pickle stops short
    with pytest.raises(UnsafeCheckpointError) as err:
        safe_load(BufferReader(data), source="x.pt")
    assert err.value.globals == ("os.system",)


def test_only_safe_globals_resolve() -> None:
    # everything torch.save emits for tensors resolves; the inert stand-ins come back
    obj, refused = safe_load(
        io.BytesIO(pickle.dumps({"s": {1, 2}, "b": b"\x00\xff", "c": 1 + 2j}, protocol=2)),
        source="x",
    )
    assert refused == () and obj == {"s": {1, 2}, "b": b"\x00\xff", "c": 1 + 2j}
