"""Rendering the doctor's results: text for people, JSON for programs.

Text output is grouped by severity (worst first) and ends with the verdict, the likely cause and
the next step. JSON output follows :data:`JSON_SCHEMA` (also in ``docs/doctor-json.md``; a test
keeps the two identical). Rendering never changes a result.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .apply import Plan, plan_fixes
from .contents import Contents
from .findings import Finding, Report, Severity, Verdict
from .fixes import FixRecord
from .keytree import format_count, format_shape, plural

__all__ = [
    "SCHEMA_VERSION",
    "DOCTOR_SCHEMA",
    "INSPECT_SCHEMA",
    "JSON_SCHEMA",
    "DOCTOR_FIELDS",
    "FINDING_FIELDS",
    "FIX_FIELDS",
    "RECORD_FIELDS",
    "INSPECT_FIELDS",
    "report_to_dict",
    "render_report",
    "contents_to_dict",
    "render_contents",
]

SCHEMA_VERSION = 1
DOCTOR_SCHEMA = f"midaskit.doctor/{SCHEMA_VERSION}"
INSPECT_SCHEMA = f"midaskit.inspect/{SCHEMA_VERSION}"

JSON_SCHEMA = """\
## `midaskit doctor --json` (schema `midaskit.doctor/1`)

One JSON object on stdout. The schema number changes only when a field changes meaning or goes
away; new fields may appear within a version.

- `"schema"` (string): `"midaskit.doctor/1"`.
- `"checkpoint"` (object): `"name"` (the path), `"tensors"`, `"params"` (floating-point
  elements), `"container"` (keys taken to reach the state dict, `[]` for a bare one).
- `"target"` (object): `"name"`, `"keys"`, `"params"`.
- `"matched"` (int): checkpoint keys that match the target by name and shape before any fix.
- `"verdict"` (string): `"loads as is"`, `"loads after safe fixes"`, `"needs a decision"` or
  `"incompatible"`, before any `--allow`.
- `"cause"` (string): the likely cause of the worst finding, `""` when it loads as is.
- `"findings"` (array): worst first; see *A finding*.
- `"fixes"` (array): every proposed fix, in the order they apply; see *A fix*.
- `"plan"` (object): `"verdict"` once the `--allow` decisions are taken, `"exit_code"`,
  `"allowed"` (the `--allow` names used), `"blocked"` (the `--allow` names still needed).
- `"applied"` (array): one record per fix applied by `--fix`, empty without `--fix`; see
  *An applied record*.
- `"output"` (string or null): the fixed file written by `--fix`.
- `"exit_code"` (int): the process exit status: 0 loads as is, 1 loads after fixes, 2
  incompatible or needs a decision.

A finding:

- `"kind"` (string): `container`, `prefix`, `ema-keys`, `layout-drift`, `bookkeeping`,
  `missing`, `unexpected`, `shape`, `layer-type`, `rename`, `rename-ambiguous`, `derived-extra`,
  `derived-missing`, `num-batches-tracked`, `dtype`, `unused`, `unsafe-global`.
- `"severity"` (string): `"error"` (no fix), `"decision"` (a fix that needs `--allow`), `"fix"`
  (a safe fix), `"info"`.
- `"message"` (string): plain words, naming the keys and shapes.
- `"remedy"` (string): what to do.
- `"cause"` (string): the likely cause when this finding is the main problem, else `""`.
- `"evidence"` (object): the data behind the message. For `shape`: `"cause"` (`input-channels`,
  `classes`, `outputs`, `pos-embed`, `rel-pos-table`, `kernel-size`, `rank`, `width`,
  `derived`) and `"tensors"` (`"key"`, `"checkpoint"` and `"target"` shapes). For `missing`
  and `unexpected`: `"groups"` (`"label"`, `"keys"`, `"params"`, `"share"`, `"units"`).
- `"keys"` (array of strings): the keys this finding explains.
- `"fixes"` (array of ints): indexes into the top-level `"fixes"`.

A fix:

- `"fix"` (string): `Unwrap`, `StripPrefix`, `AddPrefix`, `Rename`, `RenameRegex`, `UndoDrift`,
  `DropKeys`, `FillDerived`, `FillUnused`, `Reshape`, `AdaptInputChannels` or `CastDtype`.
- `"safe"` (bool): lossless and certain, so applied without asking.
- `"allow"` (string or null): the `--allow` name an unsafe fix needs.
- `"description"` (string): one line.
- `"reason"` (string): why it is needed.
- `"params"` (object): the fix's data (`"prefix"`, `"mapping"`, `"keys"`, `"mode"`, ...).
- `"runs"` (bool): whether it runs with the given `--allow`.

An applied record: `"fix"` (string), `"summary"` (string: what changed), `"reason"` (string),
`"safe"` (bool), `"keys"` (array of strings: the keys it changed, new names after a rename).

## `midaskit inspect --json` (schema `midaskit.inspect/1`)

`"schema"`, `"path"`, `"format"` (`torch-zip`, `torch-legacy` or `safetensors`), `"file_size"`,
`"container"`, `"candidates"` (`"path"`, `"tensors"`), `"extras"` (name -> description),
`"non_tensor_entries"`, `"tensors"`, `"params"`, `"bytes"`, `"dtypes"` (dtype -> count),
`"groups"` (`"label"`, `"keys"`, `"params"`, `"units"`), `"entries"` (`"key"`, `"shape"`,
`"dtype"`), `"metadata"`, `"findings"` (as above; `unsafe-global` lists `"globals"`).
"""

DOCTOR_FIELDS: dict[str, type | tuple[type, ...]] = {
    "schema": str, "checkpoint": dict, "target": dict, "matched": int, "verdict": str,
    "cause": str, "findings": list, "fixes": list, "plan": dict, "applied": list,
    "output": (str, type(None)), "exit_code": int,
}
FINDING_FIELDS: dict[str, type | tuple[type, ...]] = {
    "kind": str, "severity": str, "message": str, "remedy": str, "cause": str,
    "evidence": dict, "keys": list, "fixes": list,
}
FIX_FIELDS: dict[str, type | tuple[type, ...]] = {
    "fix": str, "safe": bool, "allow": (str, type(None)), "description": str, "reason": str,
    "params": dict, "runs": bool,
}
RECORD_FIELDS: dict[str, type | tuple[type, ...]] = {
    "fix": str, "summary": str, "reason": str, "safe": bool, "keys": list,
}
INSPECT_FIELDS: dict[str, type | tuple[type, ...]] = {
    "schema": str, "path": str, "format": str, "file_size": int, "container": list,
    "candidates": list, "extras": dict, "non_tensor_entries": dict, "tensors": int,
    "params": int, "bytes": int, "dtypes": dict, "groups": list, "entries": list,
    "metadata": dict, "findings": list,
}


def _finding_dict(f: Finding, fix_index: Mapping[int, int]) -> dict[str, Any]:
    return {
        "kind": f.kind, "severity": f.severity.value, "message": f.message, "remedy": f.remedy,
        "cause": f.cause, "evidence": dict(f.evidence), "keys": list(f.keys),
        "fixes": [fix_index[id(x)] for x in f.fixes if id(x) in fix_index],
    }


def report_to_dict(report: Report, plan: Plan | None = None,
                   records: Sequence[FixRecord] = (), output: str | None = None) -> dict[str, Any]:
    """The report as the ``midaskit.doctor/1`` JSON object."""
    fix_index = {id(f): i for i, f in enumerate(report.fixes)}
    plan = plan if plan is not None else plan_fixes(report)
    return {
        "schema": DOCTOR_SCHEMA,
        "checkpoint": dict(report.checkpoint),
        "target": dict(report.target),
        "matched": report.matched,
        "verdict": report.verdict.value,
        "cause": report.cause,
        "findings": [_finding_dict(f, fix_index) for f in report.findings],
        "fixes": [{**f.to_dict(), "runs": runs} for f, runs in zip(report.fixes, plan.runs,
                                                                     strict=True)],
        "plan": {
            "verdict": plan.verdict.value,
            "exit_code": plan.exit_code,
            "allowed": list(plan.allowed),
            "blocked": sorted({f.allow_name or "" for f in plan.blocked}),
        },
        "applied": [r.to_dict() for r in records],
        "output": output,
        "exit_code": plan.exit_code,
    }


_HEADINGS = {
    Severity.ERROR: ("cannot be fixed", "[x]"),
    Severity.DECISION: ("needs a decision", "[?]"),
    Severity.FIX: ("safe fixes", "[+]"),
    Severity.INFO: ("notes", "[i]"),
}


def _evidence_lines(f: Finding) -> list[str]:
    groups = f.evidence.get("groups")
    if not groups or len(groups) <= 3:
        return []
    lines = [f"        {g['label']}: {g['units'] or plural(g['keys'], 'key')}, "
             f"{format_count(g['params'])} params" for g in groups[:10]]
    if len(groups) > 10:
        lines.append(f"        ... and {len(groups) - 10} more")
    return lines


def render_report(report: Report, plan: Plan | None = None, records: Sequence[FixRecord] = (),
                  output: str | None = None, loaded: bool = False) -> str:
    """The report as text: summary, findings by severity, then verdict, cause and next step."""
    ck, tg = report.checkpoint, report.target
    inside = ""
    if ck.get("container"):
        inside = " (inside " + "".join(f"[{p!r}]" for p in ck["container"]) + ")"
    lines = [
        f"checkpoint   {ck['name']}: {ck['tensors']} tensors, {format_count(ck['params'])} "
        f"params{inside}",
        f"target       {tg['name']}: {tg['keys']} keys, {format_count(tg['params'])} params",
        f"matched      {report.matched} of {tg['keys']} keys as is",
    ]
    for severity in (Severity.ERROR, Severity.DECISION, Severity.FIX, Severity.INFO):
        group = [f for f in report.findings if f.severity is severity]
        if not group:
            continue
        heading, mark = _HEADINGS[severity]
        lines += ["", f"{heading} ({len(group)})"]
        for f in group:
            lines.append(f"  {mark} {f.kind}: {f.message}")
            lines += _evidence_lines(f)
            for fix in f.fixes:
                allow = f"  [--allow {fix.allow_name}]" if fix.allow_name else ""
                lines.append(f"      fix: {fix.describe()}{allow}")
            if f.remedy and not f.fixes:
                lines.append(f"      remedy: {f.remedy}")
    if records:
        lines += ["", "applied"]
        lines += [f"  {r.fix}: {r.summary}" + (f" ({r.reason})" if r.reason else "")
                  for r in records]
    lines += ["", f"verdict      {report.verdict.value}"]
    if plan is not None and plan.allowed and plan.verdict is not report.verdict:
        after = ("loads after the allowed fixes" if plan.verdict is Verdict.LOADS_AFTER_SAFE_FIXES
                 else plan.verdict.value)
        lines[-1] += f"; with --allow {' '.join(plan.allowed)}: {after}"
    if report.cause:
        lines.append(f"likely cause {report.cause}")
    lines.append(f"next step    {_next_step(report, plan, output, loaded)}")
    return "\n".join(lines) + "\n"


def _next_step(report: Report, plan: Plan | None, output: str | None, loaded: bool) -> str:
    if output:
        return f"wrote {output}" + ("; it loads with strict=True" if loaded else "")
    plan = plan if plan is not None else plan_fixes(report)
    if plan.errors:
        return "no fix makes it load; see the remedies above"
    if plan.blocked:
        names = " ".join(sorted({f.allow_name or "" for f in plan.blocked}))
        return f"review the decisions, then run again with --fix OUT --allow {names}"
    if plan.fixes:
        return "run again with --fix OUT to write a fixed copy (the input is never changed)"
    return "nothing to fix: load it with strict=True"


def contents_to_dict(contents: Contents) -> dict[str, Any]:
    """The contents as the ``midaskit.inspect/1`` JSON object."""
    return {
        "schema": INSPECT_SCHEMA,
        "path": contents.path,
        "format": contents.format,
        "file_size": contents.file_size,
        "container": list(contents.container),
        "candidates": [{"path": list(p), "tensors": n} for p, n in contents.candidates],
        "extras": dict(contents.extras),
        "non_tensor_entries": dict(contents.non_tensor_entries),
        "tensors": len(contents.metas),
        "params": contents.params,
        "bytes": contents.nbytes,
        "dtypes": contents.dtypes,
        "groups": [{"label": g.label, "keys": len(g.keys), "params": g.params, "units": g.units}
                   for g in contents.groups],
        "entries": [{"key": k, "shape": list(m.shape), "dtype": m.dtype}
                    for k, m in contents.metas.items()],
        "metadata": dict(contents.metadata),
        "findings": [_finding_dict(f, {}) for f in contents.findings],
    }


def _size(n: int) -> str:
    for unit, size in (("GB", 1 << 30), ("MB", 1 << 20), ("KB", 1 << 10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


def render_contents(contents: Contents) -> str:
    """``midaskit inspect`` text: the file, the container, tensor groups, totals, findings."""
    c = contents
    lines = [f"file         {c.path} ({c.format}, {_size(c.file_size)})"]
    where = "".join(f"[{p!r}]" for p in c.container) or "the top level (a bare state dict)"
    lines.append(f"state dict   {where}" if c.metas else "state dict   none found")
    for path, n in c.candidates:
        lines.append(f"  also        {''.join(f'[{p!r}]' for p in path)}: {n} tensors")
    for name, what in c.extras.items():
        lines.append(f"  extra       {name}: {what}")
    for name, what in c.non_tensor_entries.items():
        lines.append(f"  non-tensor  {name}: {what}")
    if c.metas:
        dtypes = ", ".join(f"{d} x{n}" for d, n in c.dtypes.items())
        lines.append(f"tensors      {len(c.metas)} ({dtypes}), {format_count(c.params)} params, "
                     f"{_size(c.nbytes)}")
        width = max(len(g.label) for g in c.groups)
        lines.append("")
        for g in c.groups:
            shape = f" {format_shape(c.metas[g.keys[0]].shape)}" if len(g.keys) == 1 else ""
            units = f"{g.units}, " if g.units else ""
            lines.append(f"  {g.label:<{width}}  {units}{plural(len(g.keys), 'tensor')}, "
                         f"{format_count(g.params)} params{shape}")
    for key, value in c.metadata.items():
        lines.append(f"metadata     {key}: {value}")
    for f in c.findings:
        lines += ["", f"[x] {f.kind}: {f.message}", f"    remedy: {f.remedy}"]
    return "\n".join(lines) + "\n"
