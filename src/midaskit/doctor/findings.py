"""The doctor's results as plain data: severities, verdicts, findings and the report.

Nothing here computes anything; the rules in :mod:`midaskit.doctor.rules` build these objects and
:mod:`midaskit.doctor.render` turns them into text or JSON.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any

from ..errors import EXIT_FIXED, EXIT_INCOMPATIBLE, EXIT_OK

if TYPE_CHECKING:  # pragma: no cover
    from .fixes import Fix

__all__ = ["Severity", "Verdict", "Finding", "Report", "Kind"]


class Severity(str, Enum):
    """How much a finding matters, from harmless to fatal (the order of :data:`SEVERITY_ORDER`)."""

    INFO = "info"  # nothing to do (unused keys, where the state dict was found)
    FIX = "fix"  # a safe, lossless fix makes it load
    DECISION = "decision"  # a fix exists but changes or guesses something: needs --allow
    ERROR = "error"  # no fix: the checkpoint does not fit here

    @property
    def rank(self) -> int:
        return _SEVERITY_RANK[self]


_SEVERITY_RANK = {Severity.INFO: 0, Severity.FIX: 1, Severity.DECISION: 2, Severity.ERROR: 3}


class Verdict(str, Enum):
    """The doctor's conclusion; ``exit_code`` is the ``midaskit doctor`` exit status."""

    LOADS_AS_IS = "loads as is"
    LOADS_AFTER_SAFE_FIXES = "loads after safe fixes"
    NEEDS_DECISION = "needs a decision"
    INCOMPATIBLE = "incompatible"

    @property
    def exit_code(self) -> int:
        return {
            Verdict.LOADS_AS_IS: EXIT_OK,
            Verdict.LOADS_AFTER_SAFE_FIXES: EXIT_FIXED,
        }.get(self, EXIT_INCOMPATIBLE)

    @classmethod
    def from_severity(cls, worst: Severity | None) -> Verdict:
        """The verdict implied by the worst finding (``None``: no findings at all)."""
        return {
            None: cls.LOADS_AS_IS,
            Severity.INFO: cls.LOADS_AS_IS,
            Severity.FIX: cls.LOADS_AFTER_SAFE_FIXES,
            Severity.DECISION: cls.NEEDS_DECISION,
            Severity.ERROR: cls.INCOMPATIBLE,
        }[worst]


class Kind:
    """The finding kinds (stable strings: they appear in the JSON output)."""

    CONTAINER = "container"
    PREFIX = "prefix"
    EMA_KEYS = "ema-keys"
    DRIFT = "layout-drift"
    BOOKKEEPING = "bookkeeping"
    MISSING = "missing"
    UNEXPECTED = "unexpected"
    SHAPE = "shape"  # evidence["cause"] says which: input-channels, classes, pos-embed, ...
    LAYER_TYPE = "layer-type"
    RENAME = "rename"
    RENAME_AMBIGUOUS = "rename-ambiguous"
    DERIVED_EXTRA = "derived-extra"
    DERIVED_MISSING = "derived-missing"
    NUM_BATCHES_TRACKED = "num-batches-tracked"
    DTYPE = "dtype"
    UNUSED = "unused"
    UNSAFE_GLOBAL = "unsafe-global"

    ALL: tuple[str, ...] = (
        CONTAINER, PREFIX, EMA_KEYS, DRIFT, BOOKKEEPING, MISSING, UNEXPECTED, SHAPE, LAYER_TYPE,
        RENAME, RENAME_AMBIGUOUS, DERIVED_EXTRA, DERIVED_MISSING, NUM_BATCHES_TRACKED, DTYPE,
        UNUSED, UNSAFE_GLOBAL,
    )


@dataclass(frozen=True)
class Finding:
    """One thing the doctor noticed.

    Attributes:
        kind: one of :class:`Kind`.
        severity: how much it matters.
        message: one plain-words sentence naming the keys and shapes involved.
        remedy: what to do about it, in plain words.
        evidence: JSON-ready data backing the message (keys, shapes, counts).
        keys: the (target-side where renamed) keys this finding accounts for.
        fixes: the fixes that resolve it, in order (empty when nothing can).
        cause: the likely cause, when this finding is the main one.
    """

    kind: str
    severity: Severity
    message: str
    remedy: str = ""
    evidence: Mapping[str, Any] = field(default_factory=dict)
    keys: tuple[str, ...] = ()
    fixes: tuple[Fix, ...] = ()
    cause: str = ""


@dataclass(frozen=True)
class Report:
    """The doctor's diagnosis of one checkpoint against one target.

    Attributes:
        findings: sorted, worst first.
        verdict: the conclusion before any ``--allow``.
        fixes: every proposed fix, in the order they must be applied.
        cause: the likely cause of the worst problem, one sentence ("" when it loads as is).
        checkpoint: summary of the checkpoint side (``name``, ``tensors``, ``params``, ``path``).
        target: summary of the target side (``name``, ``keys``, ``params``).
        matched: keys that match by name and shape before any fix.
    """

    findings: tuple[Finding, ...]
    verdict: Verdict
    fixes: tuple[Fix, ...]
    cause: str
    checkpoint: Mapping[str, Any]
    target: Mapping[str, Any]
    matched: int

    @property
    def exit_code(self) -> int:
        return self.verdict.exit_code

    @property
    def safe_fixes(self) -> tuple[Fix, ...]:
        return tuple(f for f in self.fixes if f.safe)

    @property
    def decisions(self) -> tuple[Fix, ...]:
        """Fixes that apply only when the user allows them."""
        return tuple(f for f in self.fixes if not f.safe)

    def by_kind(self, kind: str) -> list[Finding]:
        return [f for f in self.findings if f.kind == kind]

    def summary(self, max_findings: int = 3) -> str:
        """One paragraph for an error message: the verdict, the worst findings, the cause."""
        if not self.findings:
            return self.verdict.value
        worst = [f for f in self.findings if f.severity is self.findings[0].severity]
        parts = [f.message for f in worst[:max_findings]]
        if len(worst) > max_findings:
            parts.append(f"and {len(worst) - max_findings} more")
        text = f"{self.verdict.value}: " + "; ".join(parts)
        return text + (f". Likely cause: {self.cause}" if self.cause else "")
