"""The checkpoint doctor: why a checkpoint does not fit a model, in plain words, and the fixes.

``diagnose(state_dict, target)`` compares shapes only and returns a :class:`Report` (findings as
data, a :class:`Verdict`, the fixes in order). ``plan_fixes(report, allow)`` picks the fixes that
may run; ``apply_fixes(state, plan.fixes)`` runs them and logs each one. ``render_report`` and
``report_to_dict`` turn a report into text or JSON.

Example::

    from midaskit.doctor import apply_fixes, diagnose, materialize, plan_fixes
    state = torch.load(path, weights_only=True)
    report = diagnose(state, model)
    fixed, log = apply_fixes(state, plan_fixes(report).fixes)
    model.load_state_dict(materialize(fixed), strict=True)
"""

from .apply import ALLOW_NAMES, Plan, apply_fixes, materialize, plan_fixes
from .diagnose import diagnose, diagnose_against_variant, simulate
from .findings import Finding, Kind, Report, Severity, Verdict
from .fixes import (
    ADAPT_MODES,
    AdaptInputChannels,
    AddPrefix,
    CastDtype,
    DropKeys,
    FillDerived,
    FillUnused,
    Fix,
    FixRecord,
    Rename,
    RenameRegex,
    Reshape,
    StripPrefix,
    UndoDrift,
    Unwrap,
)
from .render import JSON_SCHEMA, render_report, report_to_dict
from .targets import Target, as_target, variant_target

__all__ = [
    "diagnose",
    "diagnose_against_variant",
    "simulate",
    "Target",
    "as_target",
    "variant_target",
    "Finding",
    "Kind",
    "Report",
    "Severity",
    "Verdict",
    "Plan",
    "plan_fixes",
    "apply_fixes",
    "materialize",
    "ALLOW_NAMES",
    "ADAPT_MODES",
    "Fix",
    "FixRecord",
    "Unwrap",
    "StripPrefix",
    "AddPrefix",
    "Rename",
    "RenameRegex",
    "UndoDrift",
    "DropKeys",
    "FillDerived",
    "FillUnused",
    "Reshape",
    "AdaptInputChannels",
    "CastDtype",
    "render_report",
    "report_to_dict",
    "JSON_SCHEMA",
]
