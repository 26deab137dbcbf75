"""Fuzzing the reader and the loader: mutated checkpoints are read or refused, never crash.

A crash is any exception other than a ``MidaskitError``, an error message that is not one bounded
line, a case over 2 s, or a segfault. The hypothesis runs are derandomized (the same cases on
every run) and sized for CI (~2,000 cases in all); ``bench/fuzz.py`` runs as many as you like.
"""

from __future__ import annotations

import functools
import random
import shutil
from datetime import timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fuzz_util as fu
from midaskit.errors import MidaskitError
from midaskit.loading import load  # not midaskit.load: see test_public_functions_survive_...

CASES_PER_FORMAT = 550
FUZZ = settings(
    max_examples=CASES_PER_FORMAT,
    deadline=timedelta(seconds=fu.SLOW_SECONDS),
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@functools.cache
def seed(fmt: str) -> bytes:
    return fu.seed_bytes(fmt)


@functools.cache
def marks(fmt: str) -> tuple[int, ...]:
    return tuple(fu.sections(fmt, seed(fmt)))


def _assert_no_crash(outcome: fu.Outcome, what: str) -> None:
    assert not outcome.failed, (
        f"{outcome.kind} on {what} ({outcome.seconds:.2f} s):\n{outcome.detail}"
    )


@pytest.mark.parametrize("fmt", fu.FORMATS)
def test_seeds_are_valid_checkpoints(fmt: str, tmp_path: Path) -> None:
    outcome = fu.check_bytes(seed(fmt), tmp_path, fu.SUFFIXES[fmt])
    assert outcome.kind == "ok", outcome.detail
    assert len(marks(fmt)) > 50  # the mutations have plenty of structure to aim at


@pytest.mark.parametrize("fmt", fu.FORMATS)
@FUZZ
@given(rng=st.randoms(use_true_random=False))
def test_mutated_checkpoints_are_read_or_refused(fmt: str, rng: random.Random, tmp_path: Path
                                                 ) -> None:
    mutations = fu.random_mutations(rng, len(seed(fmt)), marks(fmt))
    outcome = fu.check_bytes(fu.apply_all(seed(fmt), mutations), tmp_path, fu.SUFFIXES[fmt])
    _assert_no_crash(outcome, fu.describe_case(fmt, mutations))


@pytest.mark.parametrize("fmt", fu.FORMATS)
def test_truncation_at_every_section_is_refused(fmt: str, tmp_path: Path) -> None:
    data = seed(fmt)
    cuts = sorted({c for m in marks(fmt) for c in (m - 1, m, m + 1) if 0 <= c < len(data)})
    for cut in cuts:
        outcome = fu.check_bytes(data[:cut], tmp_path, fu.SUFFIXES[fmt])
        assert outcome.kind == "refused", f"{fmt} cut at {cut}: {outcome.kind} {outcome.detail}"


def test_a_sample_replayed_in_worker_processes(tmp_path: Path) -> None:
    """The same kind of cases, each in a worker process: a segfault would show here."""
    seeds_dir = tmp_path / "seeds"
    fu.write_seeds(seeds_dir)
    cases = [fu.Case(fmt, i) for fmt in fu.FORMATS for i in range(60)]
    results = fu.run_protected(cases, seeds_dir, seed=1, workers=2)
    failed = [f"{r.description}: {r.outcome.kind} {r.outcome.detail}" for r in results
              if r.outcome.failed]
    assert not failed, "\n".join(failed)
    assert len(results) == len(cases)


def test_the_harness_reports_segfaults_and_hangs(tmp_path: Path, monkeypatch) -> None:
    seeds_dir = tmp_path / "seeds"
    fu.write_seeds(seeds_dir)
    cases = [fu.Case("zip", i) for i in range(3)]
    monkeypatch.setenv(fu.FAULT_ENV, "segv:zip:1,hang:zip:2")  # case 2 runs in a new worker
    results = fu.run_protected(cases, seeds_dir, seed=0, workers=1, hang_seconds=2,
                               warm_up=False)
    assert not results[0].outcome.failed
    assert [r.outcome.kind for r in results[1:]] == ["died", "hang"]
    assert "status -11" in results[1].outcome.detail


def test_the_oracle_calls_foreign_exceptions_crashes(tmp_path: Path, monkeypatch) -> None:
    import midaskit.checkpoint as ckpt

    def broken(*args: object, **kwargs: object) -> None:
        raise KeyError("boom")

    monkeypatch.setattr(ckpt, "open_checkpoint", broken)
    assert fu.check_bytes(seed("zip"), tmp_path, ".pt").kind == "crash"

    def multi_line(*args: object, **kwargs: object) -> None:
        raise MidaskitError("first line\nsecond line")

    monkeypatch.setattr(ckpt, "open_checkpoint", multi_line)
    assert fu.check_bytes(seed("zip"), tmp_path, ".pt").kind == "crash"


# -- the loader on a real MiDaS file, patched in place --------------------------------------------


@pytest.fixture(scope="module")
def midas_copy(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest):
    """A private copy of the midas_v21_small_256 reference file and its section marks."""
    reference = request.getfixturevalue("reference_checkpoint")("midas_v21_small_256")
    path = tmp_path_factory.mktemp("loader") / "midas_v21_small_256.pt"
    shutil.copyfile(reference, path)
    head = path.read_bytes()
    return path, fu.sections("zip", head)


@settings(max_examples=15, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(rng=st.randoms(use_true_random=False))
def test_mutated_midas_file_loads_or_is_refused(midas_copy, rng: random.Random) -> None:
    """``midaskit.load`` on a real checkpoint with bytes patched in place (headers, pickle,
    weights): a model or a MidaskitError, never another exception."""
    path, section_marks = midas_copy
    size = path.stat().st_size
    mutations = fu.random_mutations(rng, size, section_marks, kinds=fu.IN_PLACE_KINDS)
    undo = fu.patch_file(path, mutations)
    try:
        load(path)
    except MidaskitError as exc:
        assert "\n" not in str(exc), fu.describe_case("midas", mutations)
    finally:
        fu.unpatch(path, undo)
