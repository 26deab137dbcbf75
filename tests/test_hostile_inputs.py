"""Hostile checkpoints through every door, and structural attacks on each format.

Payloads (``PAYLOADS`` of test_checkpoint_safety: os/posix.system, eval/exec/__import__,
subprocess.Popen, getattr chains, nested REDUCE, INST/OBJ, STACK_GLOBAL behind the memo) are
refused in strict mode naming their globals and read inertly in inspect mode, in the legacy format
too, and through ``midaskit.load``, ``midaskit.identify`` and every CLI command; each test checks
the marker file the payload would create. Structural attacks (zip bombs, lying sizes and offsets,
deep nesting, enormous counts) must end in one line of ``CheckpointFormatError``, fast and in
bounded memory.
"""

from __future__ import annotations

import importlib
import json
import struct
import subprocess
import sys
import time
import tracemalloc
import zipfile
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import midaskit
from hostile_util import (
    legacy_bytes,
    legacy_with_payload,
    patch_central,
    weights,
    zip_with_payload,
)
from midaskit.checkpoint import (
    find_state_dict,
    load_tensors,
    open_checkpoint,
    read_state_dict_meta,
    safe_pickle,
    safetensors_format,
)
from midaskit.cli.main import main as cli
from midaskit.errors import (
    EXIT_UNREADABLE,
    CheckpointFormatError,
    UnsafeCheckpointError,
)
from midaskit.identification import identify
from midaskit.loading import load
from test_checkpoint_safety import (
    PAYLOADS,
    FakeStorage,
    TensorRecord,
    _assert_refused_and_inert,
    _short,
    torch_zip_parts,
    write_zip_checkpoint,
)

# -- payloads: the legacy format, then every public entry point ----------------------------------


@pytest.mark.parametrize("name", sorted(PAYLOADS))
def test_payload_in_legacy_format_is_refused_and_never_runs(name: str, tmp_path: Path) -> None:
    build, expected = PAYLOADS[name]
    marker = tmp_path / "marker"
    path = legacy_with_payload(tmp_path / "hostile.pth", build(marker))
    torch.load(path, weights_only=False)  # the control: a trusting reader runs the payload
    _wait_for(marker)
    marker.unlink()
    _assert_refused_and_inert(path, marker, expected)
    assert open_checkpoint(path, mode="inspect").format == "torch-legacy"


def _wait_for(marker: Path) -> None:
    deadline = time.monotonic() + 10  # Popen's child touches the marker on its own time
    while not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert marker.exists(), "the payload is not live; the test would prove nothing"


@pytest.fixture
def hostile(tmp_path: Path, request: pytest.FixtureRequest) -> tuple[Path, Path, set[str]]:
    """``(checkpoint, marker, expected globals)`` for the payload named by the parameter."""
    build, expected = PAYLOADS[request.param]
    marker = tmp_path / "marker"
    return zip_with_payload(tmp_path / "hostile.pt", build(marker)), marker, expected


def _never_ran(marker: Path, name: str) -> None:
    if "Popen" in name:
        time.sleep(0.05)  # a spawned process would have touched the marker by now
    assert not marker.exists(), "the payload ran"


def _one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("midaskit: error: "), err
    assert "Traceback" not in err
    return lines[0]


@pytest.mark.parametrize("hostile", sorted(PAYLOADS), indirect=True)
def test_load_refuses_the_payload(hostile, request) -> None:
    path, marker, expected = hostile
    with pytest.raises(UnsafeCheckpointError) as err:
        load(path)
    assert expected <= set(err.value.globals)
    _never_ran(marker, request.node.name)


@pytest.mark.parametrize("hostile", sorted(PAYLOADS), indirect=True)
def test_identify_reads_the_payload_inertly(hostile, request) -> None:
    path, marker, _ = hostile
    result = identify(path)  # inspect mode by design: names a variant, runs nothing
    assert result.variant is None
    _never_ran(marker, request.node.name)


@pytest.mark.parametrize("command", ["inspect", "doctor", "predict"])
@pytest.mark.parametrize("hostile", sorted(PAYLOADS), indirect=True)
def test_cli_refuses_the_payload_in_one_line(hostile, command: str, tmp_path: Path, capsys,
                                             request) -> None:
    path, marker, expected = hostile
    image = tmp_path / "photo.png"
    cv2.imwrite(str(image), np.zeros((8, 8, 3), np.uint8))
    argv = {
        "inspect": ["inspect", str(path)],
        "doctor": ["doctor", str(path), "--against", str(path)],
        "predict": ["predict", str(image), "-o", str(tmp_path / "out"), "--weights", str(path)],
    }[command]
    assert cli(argv) == EXIT_UNREADABLE
    out, err = capsys.readouterr()
    if command == "inspect":  # the report on stdout names the globals; nothing on stderr
        assert all(name in out for name in expected) and "Traceback" not in out + err
    else:
        line = _one_error_line(err)
        assert all(name in line for name in expected)
    assert not (tmp_path / "out").exists()
    _never_ran(marker, request.node.name)


def test_public_functions_survive_their_submodules() -> None:
    for module in ("midaskit.loading", "midaskit.prediction", "midaskit.identification"):
        importlib.import_module(module)
    assert callable(midaskit.identify) and callable(midaskit.load) and callable(midaskit.predict)


@pytest.mark.parametrize("hostile", ["os.system by GLOBAL"], indirect=True)
def test_cli_identify_of_a_hostile_file(hostile, capsys) -> None:
    """identify reads in inspect mode: the payload is inert, the file is named as not MiDaS, and
    a warning says that load/predict would refuse it (exit 3)."""
    path, marker, _ = hostile
    assert cli(["identify", str(path)]) == EXIT_UNREADABLE
    out, err = capsys.readouterr()
    assert "not a MiDaS checkpoint" in out
    assert "system" in err and "refuse" in err and "Traceback" not in out + err
    assert not marker.exists()


@pytest.mark.parametrize("hostile", ["subprocess.Popen"], indirect=True)
def test_the_console_command_in_a_real_process(hostile) -> None:
    path, marker, _ = hostile
    run = subprocess.run([sys.executable, "-m", "midaskit", "doctor", str(path), "--against",
                          str(path)], capture_output=True, text=True, timeout=120)
    assert run.returncode == EXIT_UNREADABLE and run.stdout == ""
    assert "subprocess.Popen" in _one_error_line(run.stderr)
    _never_ran(marker, "Popen")


# -- refused fast, in bounded memory, in one line -------------------------------------------------


def _refused(path: Path, phrase: str, *, seconds: float = 2.0, peak_mb: float = 64,
             read: Callable[[Path], object] = read_state_dict_meta) -> str:
    """Read ``path``; it must fail with a one-line CheckpointFormatError containing ``phrase``,
    within ``seconds``, and again within ``peak_mb`` of Python allocations (traced in a second
    run, as tracing slows it down; mapped pages are not counted)."""
    start = time.perf_counter()
    with pytest.raises(CheckpointFormatError) as err:
        read(path)
    elapsed = time.perf_counter() - start
    message = str(err.value)
    assert phrase in message and "\n" not in message and len(message) < 1000, message
    assert elapsed < seconds, f"{elapsed:.2f} s"
    tracemalloc.start()
    try:
        with pytest.raises(CheckpointFormatError):
            read(path)
        peak = tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()
    assert peak < peak_mb, f"{peak:.0f} MB"
    return message


def _saved_zip(path: Path) -> Path:
    torch.save(weights(), path)  # members "<stem>/data.pkl", "<stem>/data/0", ...
    return path


def _zip(path: Path, members: dict[str, bytes], deflate: tuple[str, ...] = ()) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            method = zipfile.ZIP_DEFLATED if name in deflate else zipfile.ZIP_STORED
            zf.writestr(name, data, compress_type=method)
    return path


@pytest.mark.parametrize(
    ("member", "fields", "phrase"),
    [
        ("data.pkl", {"file_size": 0xFFFFFFF0}, "claims 4,294,967,280 bytes"),
        ("byteorder", {"file_size": 0xFFFFFFF0}, "claims 4,294,967,280 bytes"),
        ("data/0", {"file_size": 0xFFFFFFF0, "compress_size": 0xFFFFFFF0}, "lies past the end"),
        ("data/0", {"header_offset": 0x7FFFFFFF}, "lies past the end"),
        ("data.pkl", {"header_offset": 0x7FFFFFFF}, "corrupt zip archive"),
        ("data.pkl", {"compress_type": 99}, "zip method 99"),
        ("data.pkl", {"version_needed": 99}, "corrupt zip archive (NotImplementedError"),
        ("data.pkl", {"flags": 0x1}, "corrupt zip archive (RuntimeError"),  # encrypted
    ],
    ids=["pkl-4GB", "byteorder-4GB", "storage-4GB", "storage-offset", "pkl-offset", "method",
         "version", "encrypted"],
)
def test_lying_zip_directory(tmp_path: Path, member: str, fields: dict, phrase: str) -> None:
    path = patch_central(_saved_zip(tmp_path / "lie.pt"), f"lie/{member}", **fields)
    _refused(path, phrase)


def test_undecodable_member_name(tmp_path: Path) -> None:
    """The UTF-8 flag on a name that is not UTF-8: zipfile raises UnicodeDecodeError."""
    path = _saved_zip(tmp_path / "name.pt")
    path.write_bytes(path.read_bytes().replace(b"name/version", b"name/vers\xff\xfen"))
    patch_central(path, b"name/vers\xff\xfen", flags=0x800)
    _refused(path, "corrupt zip archive (UnicodeDecodeError")


def test_zip_bomb_in_data_pkl_is_not_inflated(tmp_path: Path) -> None:
    """80 MiB of zeros deflate to 80 KB: refused from its declared size, before inflating."""
    state_pkl, storages = torch_zip_parts(weights())
    members = {"archive/data.pkl": state_pkl + bytes(80 << 20), "archive/byteorder": b"little"}
    members.update({f"archive/data/{key}": data for key, data in storages.items()})
    path = _zip(tmp_path / "bomb.pt", members, deflate=("archive/data.pkl",))
    assert path.stat().st_size < 1 << 20
    _refused(path, "claims 83,886,")


def test_overlapping_zip_entries(tmp_path: Path) -> None:
    """The storage's entry points at data.pkl's header: its bytes would be the pickle's."""
    path = _saved_zip(tmp_path / "overlap.pt")
    with zipfile.ZipFile(path) as zf:
        offset = zf.getinfo("overlap/data.pkl").header_offset
    patch_central(path, "overlap/data/0", header_offset=offset)
    _refused(path, "overlapping entries", read=load_tensors)


def test_many_zip_members_are_read_quickly(tmp_path: Path) -> None:
    with zipfile.ZipFile(_saved_zip(tmp_path / "many.pt")) as zf:
        members = {name: zf.read(name) for name in zf.namelist()}
    members.update({f"many/extra/{i}": b"" for i in range(20_000)})
    path = _zip(tmp_path / "many.pt", members)
    start = time.perf_counter()
    assert list(read_state_dict_meta(path)) == ["weight"]
    assert time.perf_counter() - start < 2.0


@pytest.mark.parametrize(("count", "phrase"), [(2**40, "truncated"), (2**62, "truncated"),
                                               (-5, "holds -5 elements")])
def test_legacy_storage_size_lies(tmp_path: Path, count: int, phrase: str) -> None:
    path = tmp_path / "legacy.pth"
    path.write_bytes(legacy_bytes({"w": TensorRecord(FakeStorage("0", 6), 0, (6,), (1,))},
                                  {"0": bytes(24)}))
    with open_checkpoint(path) as ckpt:
        count_at = ckpt.root["w"].storage.byte_offset - 8
    data = bytearray(path.read_bytes())
    struct.pack_into("<q", data, count_at, count)
    path.write_bytes(bytes(data))
    _refused(path, phrase)


def test_legacy_storage_view_out_of_range(tmp_path: Path) -> None:
    storage = FakeStorage("0", 6)
    storage.view = ("v", 16, 4)  # elements 16..19 of a 6-element storage
    path = tmp_path / "view.pth"
    path.write_bytes(legacy_bytes({"w": TensorRecord(storage, 0, (4,), (1,))}, {"0": bytes(24)}))
    _refused(path, "corrupt storage view 'v'")


# -- deep nesting and enormous counts -------------------------------------------------------------


def _zip_around(tmp_path: Path, prefix: bytes, name: str = "x.pt") -> Path:
    """A zip checkpoint whose data.pkl runs ``prefix`` (a stack-neutral pickle body) first."""
    state_pkl, storages = torch_zip_parts(weights())
    return write_zip_checkpoint(tmp_path / name, b"\x80\x02" + prefix + state_pkl, storages)


def test_deeply_nested_dict_values_are_read(tmp_path: Path) -> None:
    deep = b"}" + b"X\x01\x00\x00\x00a}" * 100_000 + b"s" * 100_000 + b"0"  # {"a": {"a": ...}}
    with open_checkpoint(_zip_around(tmp_path, deep)) as ckpt:
        assert list(find_state_dict(ckpt.root).tensors) == ["weight"]


def test_deeply_nested_placeholder_calls_are_inert(tmp_path: Path) -> None:
    """evil.f(evil.f(...(evil.f()))), 50k deep: recorded, never called, never recursed."""
    deep = b"cevil\nf\nq\x00" + b"h\x00" * 50_000 + b")R" + b"\x85R" * 50_000 + b"0"
    path = _zip_around(tmp_path, deep)
    with open_checkpoint(path, mode="inspect") as ckpt:
        assert ckpt.unsafe_globals == ("evil.f",)
        assert list(find_state_dict(ckpt.root).tensors) == ["weight"]
    with pytest.raises(UnsafeCheckpointError):
        open_checkpoint(path)


class _Module:
    """Pickled as a whole nn.Module is: its __dict__ with _parameters/_buffers/_modules."""


_Module.__module__, _Module.__qualname__ = "evil", "Module"


def _module(children: dict, params: dict) -> _Module:
    module = _Module()
    module.__dict__.update(_parameters=params, _buffers={}, _modules=children)
    return module


def test_pickled_model_sharing_submodules_at_every_level(tmp_path: Path, monkeypatch) -> None:
    """40 levels of a module whose two children are the same module: 2**40 paths to flatten."""
    monkeypatch.setitem(sys.modules, "evil", type(sys)("evil"))
    sys.modules["evil"].Module = _Module
    node = _module({}, {"w": torch.zeros(2)})
    for _ in range(40):
        node = _module({"a": node, "b": node}, {})
    path = tmp_path / "dag.pt"
    torch.save(node, path)
    _refused(path, "more than 100,000 submodules", read=lambda p: read_state_dict_meta(
        p, mode="inspect"))


def test_pickled_model_containing_itself(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "evil", type(sys)("evil"))
    sys.modules["evil"].Module = _Module
    node = _module({}, {"w": torch.zeros(2)})
    node._modules["again"] = node
    path = tmp_path / "cycle.pt"
    torch.save(node, path)
    metas = read_state_dict_meta(path, mode="inspect")  # bounded by the nesting limit
    assert list(metas)[:2] == ["w", "again.w"] and len(metas) <= 64


@pytest.mark.parametrize(
    "body",
    [
        b"](" + b"N" * 10_001 + b"e0",  # one APPENDS of 10,001 items
        b"}" + b"(" + b"J\x00\x00\x00\x00N" * 1000 + b"u" + b"0",  # SETITEMS, batches below
        b"]q\x00" + b"h\x00N\x86a" * 10_001 + b"0",  # one APPEND at a time
    ],
    ids=["appends", "setitems", "append"],
)
def test_enormous_container_counts(tmp_path: Path, monkeypatch, body: bytes) -> None:
    monkeypatch.setattr(safe_pickle, "_MAX_ITEMS", 10_000)
    if b"u" in body[-2:]:
        body = b"}" + (b"(" + b"J\x00\x00\x00\x00N" * 1000 + b"u") * 11 + b"0"
    _refused(_zip_around(tmp_path, body), "more than 10,000 list/dict/set entries")


def test_a_large_legitimate_dict_is_read(tmp_path: Path) -> None:
    entries = b"".join(b"J" + struct.pack("<i", i) + b"N" for i in range(100_000))
    start = time.perf_counter()
    with open_checkpoint(_zip_around(tmp_path, b"}(" + entries + b"u0")) as ckpt:
        assert list(find_state_dict(ckpt.root).tensors) == ["weight"]
    assert time.perf_counter() - start < 2.0


def _safetensors(path: Path, header: dict | bytes, data: bytes = b"", length: int | None = None
                 ) -> Path:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw) if length is None else length) + raw + data)
    return path


@pytest.mark.parametrize(
    ("offsets", "phrase"),
    [
        ([-4, 0], "has 4 bytes"),
        ([0, 2**70], "bytes for a float32"),
        ([2**40, 2**40 + 4], "leaves a gap"),
        ([0.0, 4.0], "corrupt safetensors header entry"),
        ([0, 4, 8], "corrupt safetensors header entry"),
        ([True, 5], "corrupt safetensors header entry"),
        ("0-4", "corrupt safetensors header entry"),
    ],
    ids=["negative", "huge", "far", "floats", "three", "bool", "string"],
)
def test_safetensors_offsets_that_lie(tmp_path: Path, offsets: object, phrase: str) -> None:
    header = {"w": {"dtype": "F32", "shape": [1], "data_offsets": offsets}}
    _refused(_safetensors(tmp_path / "lie.safetensors", header, bytes(4)), phrase)


@pytest.mark.parametrize(
    ("length", "phrase"),
    [
        (safetensors_format.MAX_HEADER_BYTES + 1, "header claims 100,000,001 bytes"),
        (safetensors_format.MAX_HEADER_BYTES, "truncated"),  # allowed, but the file is 20 bytes
        (2**64 - 1, "not a torch or safetensors checkpoint"),  # sniffed as not safetensors
    ],
)
def test_safetensors_header_length_lies(tmp_path: Path, length: int, phrase: str) -> None:
    _refused(_safetensors(tmp_path / "len.safetensors", b"{}", bytes(10), length), phrase)


def test_safetensors_header_with_enormous_counts(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(safetensors_format, "MAX_HEADER_VALUES", 1000)
    header = b"{" + b",".join(b'"k%d":{}' % i for i in range(1002)) + b"}"  # 1,001 commas
    _refused(_safetensors(tmp_path / "many.safetensors", header), "more than 1,000 values")


def test_bytearray_claiming_10_gb_allocates_nothing(tmp_path: Path) -> None:
    """pickle's BYTEARRAY8 zero-fills the declared size before reading: 10 GB of memory."""
    body = b"\x80\x05\x96" + struct.pack("<Q", 10**10) + b"abc"
    path = write_zip_checkpoint(tmp_path / "ba.pt", body)
    _refused(path, "a bytearray of 10,000,000,000 bytes is cut off", peak_mb=1)


# -- what the file says is shown in one bounded line ----------------------------------------------


def test_huge_integer_beside_the_weights(tmp_path: Path) -> None:
    """str() of an int over 4300 digits raises ValueError; the description must not."""
    path = tmp_path / "epoch.pt"
    torch.save({"state_dict": weights(), "epoch": 10**5000}, path)
    with open_checkpoint(path) as ckpt:
        found = find_state_dict(ckpt.root)
    assert found.extras["epoch"] == "int of 16610 bits"


def _global(module: str, name: str) -> bytes:
    """``module.name()`` by STACK_GLOBAL, which takes any strings, then POP."""
    raw = module.encode()
    push_module = b"X" + struct.pack("<I", len(raw)) + raw  # BINUNICODE: any length
    return push_module + _short(b"\x8c", name) + b"\x93)R0"


@pytest.mark.parametrize(
    ("globals_", "shown"),
    [
        ([("os\nTraceback (most recent call last):", "system")], "os\\nTraceback"),
        ([("x" * 100_000, "y")], "xxx..."),
        ([(f"m{i}", "f") for i in range(5000)], "and 4,980 more"),
    ],
    ids=["newline", "100k-name", "5000-globals"],
)
def test_refused_global_names_stay_one_bounded_line(tmp_path: Path, globals_, shown: str) -> None:
    path = _zip_around(tmp_path, b"".join(_global(m, n) for m, n in globals_))
    with pytest.raises(UnsafeCheckpointError) as err:
        open_checkpoint(path)
    message = str(err.value)
    assert shown in message and "\n" not in message and len(message) < 2000
    assert len(err.value.globals) == len(globals_)


def test_library_messages_quoting_the_file_are_cut(tmp_path: Path) -> None:
    """int() quotes the INT opcode's whole line (here 100 kB, with a newline) in its message."""
    body = b"\x80\x02I" + b"x\r" * 50_000 + b"\n."
    message = _refused(write_zip_checkpoint(tmp_path / "int.pt", body), "corrupt pickle")
    assert len(message) < 400
