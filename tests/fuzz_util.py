"""The checkpoint fuzzer shared by ``tests/test_fuzz_reader.py`` and ``bench/fuzz.py``.

Seeds are small valid checkpoints of each format, written with torch and safetensors; a case is a
seed with a few mutations (byte flips, truncation, inserted or overwritten garbage, an extreme
integer written over a size or offset field), placed near a *section boundary* (zip headers and
members, pickle opcodes, the safetensors header and tensor ranges) half of the time. The oracle
reads the mutated file through the whole reading path; anything but a ``MidaskitError`` with a
one-line message is a crash. ``run_protected`` replays cases in worker processes, so a segfault
or a hang is caught and attributed to its case.
"""

from __future__ import annotations

import io
import json
import os
import pickletools
import queue
import random
import struct
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import zipfile
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

FORMATS = ("zip", "legacy", "safetensors")
SUFFIXES = {"zip": ".pt", "legacy": ".pth", "safetensors": ".safetensors"}
SLOW_SECONDS = 2.0  # a case slower than this counts as a crash
MAX_MESSAGE = 2000  # an error message longer than this is not "one line a user can act on"
# values that random flips rarely produce but that break size and offset fields
EXTREME_INTS = (0, 1, 0x7F, 0xFF, 0x7FFF, 0xFFFF, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 2**63 - 1,
                2**64 - 1)


# -- seeds ----------------------------------------------------------------------------------------


def _seed_state() -> OrderedDict:
    import torch

    base = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    return OrderedDict(
        [
            ("conv.weight", base),
            ("conv.weight_t", base.t()),  # a strided view of the same storage
            ("conv.bias", torch.tensor([0.5, -1.0, 2.0], dtype=torch.float16)),
            ("norm.running_mean", torch.zeros(3, dtype=torch.bfloat16)),
            ("norm.num_batches_tracked", torch.tensor(7)),
            ("mask", torch.tensor([True, False])),
        ]
    )


def seed_bytes(fmt: str) -> bytes:
    """A small valid checkpoint of ``fmt``: a training container for torch, a flat file else."""
    import torch

    state = _seed_state()
    buf = io.BytesIO()
    if fmt == "safetensors":
        from safetensors.torch import save

        flat = {k: v.contiguous().clone() for k, v in state.items()}
        return save(flat, metadata={"format": "pt", "note": "fuzz seed"})
    container = {"state_dict": state, "epoch": 3, "config": {"lr": 0.1, "name": "fuzz"}}
    torch.save(container, buf, _use_new_zipfile_serialization=(fmt == "zip"))
    return buf.getvalue()


def write_seeds(folder: Path) -> dict[str, Path]:
    """The three seeds as files in ``folder`` (the workers read them; they never import torch
    to build them)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for fmt in FORMATS:
        paths[fmt] = folder / f"seed{SUFFIXES[fmt]}"
        paths[fmt].write_bytes(seed_bytes(fmt))
    return paths


# -- section boundaries ---------------------------------------------------------------------------


def pickle_ops(data: bytes, start: int = 0) -> tuple[list[int], int]:
    """Opcode positions of the pickle at ``data[start:]`` (absolute) and where it ends."""
    positions = [start + pos for _op, _arg, pos in pickletools.genops(data[start:])]
    return positions, positions[-1] + 1


def sections(fmt: str, data: bytes) -> list[int]:
    """Offsets where a structure of the valid file ``data`` starts or ends, sorted."""
    marks = {0, len(data)}
    if fmt == "zip":
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            for info in zf.infolist():
                start = info.header_offset
                name_len, extra_len = struct.unpack("<HH", data[start + 26 : start + 30])
                body = start + 30 + name_len + extra_len  # the local header's own lengths
                marks.update((start, body, body + info.compress_size))
                if info.filename.endswith("data.pkl"):
                    marks.update(pickle_ops(data[: body + info.compress_size], body)[0])
        for magic in (b"PK\x01\x02", b"PK\x05\x06", b"PK\x06\x06", b"PK\x06\x07"):
            at = data.find(magic)
            while at >= 0:
                marks.add(at)
                at = data.find(magic, at + 1)
    elif fmt == "legacy":
        pos = 0
        for _ in range(5):  # magic, protocol, sys_info, the object, the storage keys
            ops, pos = pickle_ops(data, pos)
            marks.update(ops)
        marks.add(pos)
    else:
        (header_len,) = struct.unpack("<Q", data[:8])
        marks.update((8, 8 + header_len))
        header = data[8 : 8 + header_len]
        marks.update(8 + i for i, c in enumerate(header) if c in b'{}[]:,"')
        for entry in json.loads(header).values():
            if "data_offsets" in entry:
                marks.update(8 + header_len + off for off in entry["data_offsets"])
    marks.update(_storage_marks(data, SUFFIXES[fmt]))
    return sorted(m for m in marks if 0 <= m <= len(data))


def _storage_marks(data: bytes, suffix: str) -> set[int]:
    """Where each storage's bytes start and end (and a legacy storage's count), read by us."""
    from midaskit.checkpoint import find_state_dict, open_checkpoint

    marks = set()
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"seed{suffix}"
        path.write_bytes(data)
        with open_checkpoint(path) as ckpt:
            for tensor in find_state_dict(ckpt.root).tensors.values():
                start = tensor.storage.byte_offset
                marks.update((start - 8, start, start + tensor.storage.nbytes))
    return marks


# -- mutations ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Mutation:
    """One edit of a file's bytes.

    Attributes:
        kind: ``flip`` (xor ``value`` at ``pos``), ``truncate`` (keep ``pos`` bytes), ``insert``
            / ``overwrite`` (``data`` at ``pos``), ``delete`` (``size`` bytes at ``pos``),
            ``int`` (``value`` as a ``size``-byte little-endian integer at ``pos``).
    """

    kind: str
    pos: int
    value: int = 0
    size: int = 0
    data: bytes = b""

    def apply(self, blob: bytes) -> bytes:
        pos = min(self.pos, len(blob))
        if self.kind == "flip":
            return blob[:pos] + bytes([blob[pos] ^ self.value]) + blob[pos + 1 :] if blob[pos:] \
                else blob
        if self.kind == "truncate":
            return blob[:pos]
        if self.kind == "insert":
            return blob[:pos] + self.data + blob[pos:]
        if self.kind == "overwrite":
            return blob[:pos] + self.data + blob[pos + len(self.data) :]
        if self.kind == "delete":
            return blob[:pos] + blob[pos + self.size :]
        if self.kind == "int":
            raw = (self.value % 2 ** (8 * self.size)).to_bytes(self.size, "little")
            return blob[:pos] + raw + blob[pos + self.size :]
        raise ValueError(f"unknown mutation {self.kind!r}")

    def __str__(self) -> str:
        if self.kind == "flip":
            return f"flip@{self.pos}^{self.value:#04x}"
        if self.kind == "truncate":
            return f"truncate@{self.pos}"
        if self.kind in ("insert", "overwrite"):
            return f"{self.kind}@{self.pos}:{self.data[:16].hex()}" + (
                f"..({len(self.data)}B)" if len(self.data) > 16 else "")
        if self.kind == "delete":
            return f"delete@{self.pos}+{self.size}"
        return f"int{8 * self.size}@{self.pos}={self.value:#x}"


def apply_all(blob: bytes, mutations: Iterable[Mutation]) -> bytes:
    for mutation in mutations:
        blob = mutation.apply(blob)
    return blob


def patch_file(path: Path, mutations: Iterable[Mutation]) -> list[tuple[int, bytes]]:
    """Apply size-preserving mutations to ``path`` in place; returns what ``unpatch`` restores
    (a big file is patched, not copied, for each case)."""
    undo = []
    with open(path, "r+b") as fh:
        for m in mutations:
            fh.seek(m.pos)
            old = fh.read(max(m.size, len(m.data), 1))
            fh.seek(m.pos)
            fh.write(replace(m, pos=0).apply(old)[: len(old)])
            undo.append((m.pos, old))
    return undo


def unpatch(path: Path, undo: list[tuple[int, bytes]]) -> None:
    with open(path, "r+b") as fh:
        for pos, old in reversed(undo):
            fh.seek(pos)
            fh.write(old)


def describe_case(fmt: str, mutations: Sequence[Mutation]) -> str:
    return f"{fmt}: " + (", ".join(map(str, mutations)) or "(unchanged)")


KINDS = ("flip", "flip", "flip", "truncate", "insert", "overwrite", "delete", "int", "int")
IN_PLACE_KINDS = ("flip", "flip", "overwrite", "int")  # the file keeps its size


def random_mutations(rng: random.Random, size: int, marks: Sequence[int],
                     kinds: Sequence[str] = KINDS) -> list[Mutation]:
    """One to three mutations of a ``size``-byte file, half of them near a section boundary."""

    def position(limit: int) -> int:
        if marks and rng.random() < 0.5:
            return max(0, min(limit, rng.choice(marks) + rng.randint(-4, 4)))
        return rng.randint(0, max(limit, 0))

    out = []
    for _ in range(rng.choice((1, 1, 1, 2, 3))):
        kind = rng.choice(kinds)
        pos = position(size - 1)
        if kind == "flip":
            out.append(Mutation("flip", pos, value=rng.randint(1, 255)))
        elif kind == "truncate":
            out.append(Mutation("truncate", pos))
        elif kind in ("insert", "overwrite"):
            n = min(rng.choice((1, 2, 4, 8, rng.randint(1, 64))), size - pos)
            out.append(Mutation(kind, pos, data=rng.randbytes(max(n, 1))))
        elif kind == "delete":
            out.append(Mutation("delete", pos, size=rng.choice((1, 2, 4, rng.randint(1, 64)))))
        else:
            value = rng.choice(EXTREME_INTS) if rng.random() < 0.8 else rng.getrandbits(64)
            width = min(rng.choice((1, 2, 4, 8)), max(size - pos, 1))
            out.append(Mutation("int", pos, value=value, size=width))
        size = len(out[-1].apply(bytes(size)))
    return out


def case_rng(seed: int, fmt: str, index: int) -> random.Random:
    """The generator of case ``index``: the same case on any machine, in any worker."""
    return random.Random(f"midaskit-fuzz/{seed}/{fmt}/{index}")


# -- the oracle -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    """How one case ended.

    Attributes:
        kind: ``ok`` (read), ``refused`` (a MidaskitError), ``crash`` (any other exception, or a
            message that is not one bounded line), ``slow``, ``hang``, ``died`` (the worker was
            killed by a signal: a segfault).
        detail: the error message, or the traceback of a crash.
        seconds: time taken.
    """

    kind: str
    detail: str
    seconds: float

    @property
    def failed(self) -> bool:
        return self.kind not in ("ok", "refused")


def exercise(path: Path) -> None:
    """Everything a user's command does with a checkpoint, short of building a model: open it in
    both modes, find and describe its state dict, and read every tensor's bytes."""
    from midaskit.checkpoint import find_state_dict, open_checkpoint
    from midaskit.errors import UnsafeCheckpointError

    for mode in ("inspect", "strict"):
        try:
            ckpt = open_checkpoint(path, mode=mode)  # type: ignore[arg-type]
        except UnsafeCheckpointError:
            if mode == "strict":
                continue  # refused, as it should be; inspect mode read it already
            raise
        with ckpt:
            found = find_state_dict(ckpt.root, source=str(path))
            for tensor in found.tensors.values():
                tensor.meta  # noqa: B018
                tensor.materialize().clone()  # touches every byte of the view


def check_case(path: Path) -> Outcome:
    """Run the oracle on ``path`` in this process and classify the result."""
    from midaskit.errors import MidaskitError

    start = time.perf_counter()
    try:
        exercise(path)
    except MidaskitError as exc:
        seconds = time.perf_counter() - start
        message = str(exc)
        if "\n" in message or len(message) > MAX_MESSAGE or not message.strip():
            return Outcome("crash", f"bad message ({len(message)} chars): {message[:300]!r}",
                           seconds)
        kind = "slow" if seconds > SLOW_SECONDS else "refused"
        return Outcome(kind, message, seconds)
    except BaseException as exc:  # noqa: BLE001 - the point is to catch anything
        if isinstance(exc, KeyboardInterrupt):
            raise
        return Outcome("crash", traceback.format_exc(limit=-6), time.perf_counter() - start)
    seconds = time.perf_counter() - start
    return Outcome("slow" if seconds > SLOW_SECONDS else "ok", "", seconds)


def check_bytes(blob: bytes, folder: Path, suffix: str) -> Outcome:
    """``check_case`` on a fresh file holding ``blob``.

    A new name each time: a tensor of the previous case may still map the old file, and
    rewriting a mapped file in place would fault its pages (SIGBUS) when it shrinks.
    """
    fd, name = tempfile.mkstemp(suffix=suffix, dir=folder)
    with os.fdopen(fd, "wb") as fh:
        fh.write(blob)
    try:
        return check_case(Path(name))
    finally:
        os.unlink(name)


# -- protected replay in worker processes ---------------------------------------------------------


@dataclass(frozen=True)
class Case:
    fmt: str
    index: int


@dataclass
class Result:
    """A replayed case: what it was, how it ended, the worker's peak RSS so far (MB)."""

    case: Case
    description: str
    outcome: Outcome
    rss_mb: float = 0.0


# "segv:FMT:INDEX,hang:FMT:INDEX": the worker faults on those cases (tests the harness)
FAULT_ENV = "MIDASKIT_FUZZ_FAULT"


def _worker_main(seeds_dir: str, seed: int, warm_up: bool = True) -> None:
    """Worker: read ``fmt index`` lines on stdin, report ``START``/``DONE`` lines on stdout."""
    import faulthandler
    import resource

    seeds = {fmt: (Path(seeds_dir) / f"seed{SUFFIXES[fmt]}").read_bytes() for fmt in FORMATS}
    marks = {fmt: sections(fmt, data) for fmt, data in seeds.items()}
    faults = dict(f.split(":", 1)[::-1] for f in os.environ.get(FAULT_ENV, "").split(",") if f)
    with tempfile.TemporaryDirectory(prefix="midaskit-fuzz-") as scratch:
        for fmt, data in seeds.items() if warm_up else ():  # the first read imports torch
            check_bytes(data, Path(scratch), SUFFIXES[fmt])
        for line in sys.stdin:
            fmt, index = line.split()
            mutations = random_mutations(case_rng(seed, fmt, int(index)), len(seeds[fmt]),
                                         marks[fmt])
            print(f"START {fmt} {index}", flush=True)
            fault = faults.get(f"{fmt}:{index}")
            if fault == "segv":
                faulthandler.disable()
                faulthandler._sigsegv()  # type: ignore[attr-defined]
            elif fault == "hang":
                time.sleep(3600)
            outcome = check_bytes(apply_all(seeds[fmt], mutations), Path(scratch),
                                  SUFFIXES[fmt])
            rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            print("DONE " + json.dumps([outcome.kind, outcome.detail, outcome.seconds, rss_mb]),
                  flush=True)


def _spawn(seeds_dir: Path, seed: int, warm_up: bool) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    code = (f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); "
            f"import fuzz_util; fuzz_util._worker_main({str(seeds_dir)!r}, {seed}, {warm_up})")
    return subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            bufsize=1, env=env)


def _lines(stream: io.TextIOBase, into: queue.Queue) -> None:
    for line in stream:
        into.put(line)
    into.put(None)


def _run_chunk(cases: list[Case], seeds_dir: Path, seed: int, hang_seconds: float,
               describe: dict[Case, str], warm_up: bool) -> Iterator[Result]:
    """Replay ``cases`` in a worker; a dead or stuck worker is replaced after its case."""
    todo = list(cases)
    while todo:
        proc = _spawn(seeds_dir, seed, warm_up)
        lines: queue.Queue = queue.Queue()
        threading.Thread(target=_lines, args=(proc.stdout, lines), daemon=True).start()
        assert proc.stdin is not None
        proc.stdin.write("".join(f"{c.fmt} {c.index}\n" for c in todo))
        proc.stdin.close()
        current: Case | None = None
        started = 0.0
        while todo:
            try:  # the first case also waits for the worker's imports
                line = lines.get(timeout=hang_seconds + (0 if current else 60))
            except queue.Empty:
                line = "HANG"
            if line is None or line == "HANG":
                proc.kill()
                proc.wait()
                if current is None:  # died before its first case: report it on that case
                    current, started = todo[0], time.perf_counter()
                kind = "hang" if line == "HANG" else "died"
                detail = (f"no result after {hang_seconds:.0f} s" if kind == "hang"
                          else f"worker exited with status {proc.returncode}")
                todo.remove(current)
                yield Result(current, describe[current],
                             Outcome(kind, detail, time.perf_counter() - started))
                break
            if line.startswith("START"):
                _, fmt, index = line.split()
                current, started = Case(fmt, int(index)), time.perf_counter()
            elif line.startswith("DONE") and current is not None:
                kind, detail, seconds, rss_mb = json.loads(line[5:])
                todo.remove(current)
                yield Result(current, describe[current], Outcome(kind, detail, seconds), rss_mb)
                current = None
        else:
            proc.wait()


def run_protected(cases: Sequence[Case], seeds_dir: Path, *, seed: int, workers: int = 2,
                  hang_seconds: float = 20.0, warm_up: bool = True) -> list[Result]:
    """Replay ``cases`` in ``workers`` processes; returns a result per case, in input order.

    ``warm_up`` reads the seeds first in each worker, so that importing torch is not timed as
    part of its first case."""
    seeds = {fmt: (seeds_dir / f"seed{SUFFIXES[fmt]}").read_bytes() for fmt in FORMATS}
    marks = {fmt: sections(fmt, data) for fmt, data in seeds.items()}
    describe = {
        c: describe_case(c.fmt, random_mutations(case_rng(seed, c.fmt, c.index),
                                                 len(seeds[c.fmt]), marks[c.fmt]))
        for c in cases
    }
    chunks = [list(cases[i::workers]) for i in range(workers)]
    results: dict[Case, Result] = {}
    lock = threading.Lock()

    def drive(chunk: list[Case]) -> None:
        for result in _run_chunk(chunk, seeds_dir, seed, hang_seconds, describe, warm_up):
            with lock:
                results[result.case] = result

    threads = [threading.Thread(target=drive, args=(c,)) for c in chunks if c]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return [results[c] for c in cases]
