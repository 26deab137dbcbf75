"""Applying a report's fixes: which ones may run (``--allow``), running them, and their log.

Key-only fixes keep the ``LazyTensor`` (or tensor) objects as they are, so renaming or dropping
keys reads no bytes; :func:`materialize` reads the tensors once, when they are written or loaded.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from .findings import Finding, Report, Severity, Verdict
from .fixes import AdaptInputChannels, Fix, FixRecord

__all__ = ["Plan", "plan_fixes", "apply_fixes", "materialize", "ALLOW_NAMES"]

# every --allow name a fix can ask for ("all" allows every one)
ALLOW_NAMES = ("adapt-input-channels", "drop-running-stats", "drop-unexpected", "rename",
               "drop-keys", "cast", "all")


@dataclass(frozen=True)
class Plan:
    """What will run, given what the user allows.

    Attributes:
        fixes: the fixes to apply, in order.
        blocked: decisions the user has not allowed.
        errors: findings no fix resolves.
        allowed: the ``--allow`` names used by ``fixes``.
        runs: for each of the report's fixes, whether it runs.
    """

    fixes: tuple[Fix, ...]
    blocked: tuple[Fix, ...]
    errors: tuple[Finding, ...]
    allowed: tuple[str, ...] = ()
    runs: tuple[bool, ...] = ()

    @property
    def can_apply(self) -> bool:
        return not self.errors and not self.blocked

    @property
    def verdict(self) -> Verdict:
        """The verdict once the allowed decisions are taken."""
        if self.errors:
            return Verdict.INCOMPATIBLE
        if self.blocked:
            return Verdict.NEEDS_DECISION
        return Verdict.LOADS_AFTER_SAFE_FIXES if self.fixes else Verdict.LOADS_AS_IS

    @property
    def exit_code(self) -> int:
        return self.verdict.exit_code


def plan_fixes(report: Report, allow: Iterable[str] = (), *, adapt_mode: str | None = None
               ) -> Plan:
    """Split the report's fixes into those that run and those the user must still allow.

    Args:
        report: the diagnosis.
        allow: ``--allow`` names (``"all"`` allows everything).
        adapt_mode: replaces the mode of every :class:`AdaptInputChannels` fix.
    """
    allowed = set(allow)
    run: list[Fix] = []
    blocked: list[Fix] = []
    used: list[str] = []
    runs: list[bool] = []
    for fix in report.fixes:
        if adapt_mode and isinstance(fix, AdaptInputChannels):
            fix = replace(fix, mode=adapt_mode)
        name = fix.allow_name
        runs.append(name is None or name in allowed or "all" in allowed)
        if name is None:
            run.append(fix)
        elif runs[-1]:
            run.append(fix)
            used.append(name)
        else:
            blocked.append(fix)
    errors = tuple(f for f in report.findings if f.severity is Severity.ERROR)
    return Plan(tuple(run), tuple(blocked), errors, tuple(dict.fromkeys(used)), tuple(runs))


def apply_fixes(state: Any, fixes: Iterable[Fix]) -> tuple[dict[str, Any], list[FixRecord]]:
    """Apply ``fixes`` in order to ``state`` (the file's root when the first is an ``Unwrap``).

    Returns:
        The new state (``LazyTensor`` / tensor values) and one :class:`FixRecord` per fix.
    """
    records = []
    for fix in fixes:
        state, record = fix.apply(state)
        records.append(record)
    return dict(state), records


def materialize(state: Mapping[str, Any]) -> dict[str, Any]:
    """``{key: torch.Tensor}``: reads each ``LazyTensor`` (memory-mapped where possible)."""
    out = {}
    for key, value in state.items():
        read = getattr(value, "materialize", None)
        out[key] = read() if callable(read) else value
    return out
