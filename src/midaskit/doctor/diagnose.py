"""``diagnose``: run the rules in order and conclude with a verdict, a likely cause and a plan.

The diagnosis works on shapes only (no tensor bytes). It checks its own plan: applying every
proposed fix to the checkpoint's metas must give exactly the target's keys and shapes, else the
verdict is ``incompatible``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..checkpoint.types import TensorMeta
from .findings import Finding, Kind, Report, Severity, Verdict
from .fixes import Fix, Unwrap, meta_of
from .keyrules import rule_container, rule_drift, rule_prefix
from .keytree import count_params
from .rules import RULES, Comparison
from .targets import Target, as_target, variant_target

__all__ = ["diagnose", "diagnose_against_variant", "simulate"]

_KIND_ORDER = {kind: i for i, kind in enumerate(Kind.ALL)}


def simulate(metas: Mapping[str, TensorMeta], fixes: tuple[Fix, ...] | list[Fix]
             ) -> dict[str, TensorMeta]:
    """The metas after ``fixes`` (an :class:`Unwrap` is skipped: ``metas`` are unwrapped)."""
    state: dict[str, Any] = dict(metas)
    for fix in fixes:
        if not isinstance(fix, Unwrap):
            state, _ = fix.apply(state)
    return state


def diagnose(checkpoint: Mapping[str, Any], target: Target | Mapping[str, Any] | Any, *,
             unwrapped: Any | None = None, name: str = "the checkpoint") -> Report:
    """Compare a checkpoint's state dict with a target and explain every difference.

    Args:
        checkpoint: key -> ``TensorMeta``, ``LazyTensor`` or tensor (the unwrapped state dict).
        target: a :class:`Target`, an ``nn.Module`` (best built on ``meta``) or another state
            dict / ``{key: TensorMeta}``.
        unwrapped: the reader's ``Unwrapped`` (container path, extras), if the state dict came
            out of a container.
        name: how the report names the checkpoint (usually its path).

    Returns:
        The :class:`Report`: findings worst first, the verdict, the fixes in apply order.
    """
    tgt = as_target(target)
    ckpt0 = {k: meta_of(v) for k, v in checkpoint.items()}
    findings: list[Finding] = [*rule_container(unwrapped)]
    findings += rule_prefix(ckpt0, tgt.metas)
    ckpt = simulate(ckpt0, [f for x in findings for f in x.fixes])
    drifts = rule_drift(ckpt, tgt.metas)
    findings += drifts
    ckpt = simulate(ckpt, [f for x in drifts for f in x.fixes])
    cmp = Comparison.of(ckpt, tgt)
    for rule in RULES:
        new = rule(cmp)
        findings += new
        cmp = cmp.without(k for f in new for k in f.keys)
    fixes = tuple(f for x in findings for f in x.fixes)
    findings += _check_plan(ckpt0, tgt, fixes, findings)
    ordered = sorted(findings, key=lambda f: (-f.severity.rank, _KIND_ORDER.get(f.kind, 99)))
    worst = ordered[0].severity if ordered else None
    verdict = Verdict.from_severity(worst)
    cause = _likely_cause(ordered, worst, len(ckpt0))
    if verdict is Verdict.LOADS_AS_IS:
        cause = ""
    matched = sum(k in tgt.metas and tgt.metas[k].shape == m.shape for k, m in ckpt0.items())
    return Report(
        tuple(ordered), verdict, fixes, cause,
        {"name": name, "tensors": len(ckpt0), "params": count_params(ckpt0),
         "container": list(getattr(unwrapped, "path", ()) or ())},
        {"name": tgt.name, "keys": len(tgt.metas), "params": tgt.num_params},
        matched,
    )


_WHOLE_FILE_KINDS = (Kind.CONTAINER, Kind.PREFIX, Kind.EMA_KEYS, Kind.DRIFT)


def _likely_cause(findings: list[Finding], worst: Severity | None, n_keys: int) -> str:
    """The cause of the worst finding that explains the most keys (a prefix explains all)."""
    def weight(f: Finding) -> int:
        return n_keys + 1 if f.kind in _WHOLE_FILE_KINDS else len(f.keys)

    top = [f for f in findings if f.severity is worst and f.cause]
    return max(top, key=weight).cause if top else ""


def diagnose_against_variant(checkpoint: Mapping[str, Any], variant: str, *,
                             unwrapped: Any | None = None, name: str = "the checkpoint",
                             build: bool = True) -> Report:
    """:func:`diagnose` against the official layout of a MiDaS variant (see
    :func:`~midaskit.doctor.targets.variant_target`)."""
    return diagnose(checkpoint, variant_target(variant, build=build), unwrapped=unwrapped,
                    name=name)


def _check_plan(ckpt: Mapping[str, TensorMeta], target: Target, fixes: tuple[Fix, ...],
                findings: list[Finding]) -> list[Finding]:
    """An ERROR finding if the fixes would not reach the target layout (and none says why)."""
    if any(f.severity is Severity.ERROR for f in findings):
        return []
    result = simulate(ckpt, fixes)
    wrong = sorted(
        set(result) ^ set(target.metas)
        | {k for k in result if k in target.metas and result[k].shape != target.metas[k].shape}
    )
    if not wrong:
        return []
    return [Finding(
        Kind.MISSING, Severity.ERROR,
        f"after the proposed fixes {len(wrong)} keys still differ (e.g. `{wrong[0]}`)",
        "report this checkpoint to midaskit: the doctor could not explain it",
        {"keys": wrong[:50], "count": len(wrong)}, tuple(wrong), (),
        "the checkpoint differs from your model in a way the doctor cannot explain")]
