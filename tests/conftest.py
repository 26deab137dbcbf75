"""Shared fixtures: reference data paths, the registry's variant names, cached reference weights."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # tests/refweights.py

import refweights  # noqa: E402
from midaskit.variants import all_variants  # noqa: E402

REFERENCE = refweights.DATA
VARIANT_NAMES = [spec.name for spec in all_variants()]


@pytest.fixture(scope="session")
def reference_stats() -> dict:
    return json.loads((REFERENCE / "expected" / "stats.json").read_text())


@pytest.fixture(scope="session")
def reference_checkpoint():
    """Function ``(variant, seed=0) -> Path`` of a cached official-layout checkpoint."""
    return refweights.reference_checkpoint
