"""Rules on key names, run before keys are compared: the container, wrapper prefixes, EMA key
styles and known layout drifts. Each returns findings whose fixes rename keys only; ``diagnose``
applies them to the metas before the comparison rules in :mod:`midaskit.doctor.rules` run.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..checkpoint.types import TensorMeta
from ..drift import detect_drifts
from .findings import Finding, Kind, Severity
from .fixes import AddPrefix, Fix, Rename, StripPrefix, UndoDrift, Unwrap
from .prefixes import (
    KNOWN_PREFIXES,
    count_matches,
    find_prefix_change,
    find_underscore_match,
    split_known,
)

__all__ = ["rule_container", "rule_prefix", "rule_drift"]


def rule_container(unwrapped: Any | None) -> list[Finding]:
    """The state dict sits inside a container (``{'model': ..., 'optimizer': ...}``)."""
    if unwrapped is None or not tuple(getattr(unwrapped, "path", ())):
        return []
    path = tuple(unwrapped.path)
    extras = dict(getattr(unwrapped, "extras", {}) or {})
    others = [(p, n) for p, n in getattr(unwrapped, "candidates", []) or [] if tuple(p) != path]
    where = "".join(f"[{p!r}]" for p in path)
    message = f"the weights are inside a container, at {where}"
    if extras:
        message += "; the file also holds " + ", ".join(f"{k} ({v})" for k, v in extras.items())
    if others:
        message += "; other candidates: " + ", ".join(
            "".join(f"[{p!r}]" for p in cp) + f" ({n} tensors)" for cp, n in others)
    return [Finding(
        Kind.CONTAINER, Severity.FIX, message, f"take the state dict from {where} (safe)",
        {"path": list(path), "extras": extras,
         "candidates": [{"path": list(p), "tensors": n} for p, n in others]},
        (), (Unwrap(path, reason="the weights are inside a training checkpoint"),),
        "the file is a training checkpoint that wraps the weights",
    )]


def rule_prefix(ckpt: Mapping[str, TensorMeta], target: Mapping[str, TensorMeta]
                ) -> list[Finding]:
    """A wrapper prefix to strip or add, or EMA keys with their dots replaced."""
    ckpt_keys, target_keys = list(ckpt), list(target)
    change = find_prefix_change(ckpt, target)
    ema = find_underscore_match(ckpt_keys, target_keys)
    if ema is not None and len(ema.mapping) > change.matched:
        return _ema_finding(ema, len(ckpt_keys))
    if not change.is_change:
        return []
    fixes: list[Fix] = []
    sources = []
    parts = []
    if change.strip:
        have = sum(k.startswith(change.strip) for k in ckpt_keys)
        share = f"all {len(ckpt_keys)}" if have == len(ckpt_keys) else f"{have} of {len(ckpt_keys)}"
        for seg in split_known(change.strip):
            source = KNOWN_PREFIXES.get(seg, f"a wrapper holding the network as `{seg[:-1]}`")
            fixes.append(StripPrefix(seg, f"added by {source}"))
            sources.append(f"`{seg}`: {source}")
        parts.append(f"{share} keys start with `{change.strip}`")
    if change.add:
        source = f"the submodule your model keeps under `{change.add[:-1]}`"
        fixes.append(AddPrefix(change.add, f"the file was saved from {source}"))
        sources.append(f"`{change.add}`: the file was saved from {source}")
        parts.append(f"the keys lack the prefix `{change.add}` that your model's keys have")
    message = (" and ".join(parts) + f" ({'; '.join(sources)}); {change.baseline} of "
               f"{len(target_keys)} keys match as is, {change.matched} after the change")
    remedy = " then ".join(f.describe() for f in fixes) + " (safe: only the names change)"
    cause = "the checkpoint was saved through " + " and ".join(
        KNOWN_PREFIXES.get(seg, f"a wrapper (`{seg}`)") for seg in split_known(change.strip))
    if not change.strip:
        cause = f"the checkpoint was saved from {source}"
    return [Finding(Kind.PREFIX, Severity.FIX, message, remedy,
                    {"strip": change.strip, "add": change.add, "matched_before": change.baseline,
                     "matched_after": change.matched}, (), tuple(fixes), cause)]


def _ema_finding(ema: Any, n_keys: int) -> list[Finding]:
    fixes: list[Fix] = []
    if ema.strip:
        fixes.append(StripPrefix(ema.strip, KNOWN_PREFIXES.get(ema.strip, "")))
    sep = "`_`" if ema.separator else "nothing"
    reason = f"EMA weights saved with the dots of their names replaced by {sep}"
    fixes.append(Rename(tuple(ema.mapping.items()), reason))
    message = (f"{len(ema.mapping)} of {n_keys} keys are EMA-style names with the dots replaced "
               f"by {sep} (e.g. `{next(iter(ema.mapping))}` is "
               f"`{next(iter(ema.mapping.values()))}`)")
    findings = [Finding(Kind.EMA_KEYS, Severity.FIX, message,
                        "rename them back to dotted names (safe: the mapping is unique)",
                        {"separator": ema.separator, "strip": ema.strip,
                         "mapping": dict(ema.mapping)}, (), tuple(fixes),
                        "the file holds EMA weights saved by a helper that stores flat names")]
    if ema.ambiguous:
        findings.append(Finding(
            Kind.RENAME_AMBIGUOUS, Severity.INFO,
            f"{len(ema.ambiguous)} EMA-style keys could each be several of your keys "
            f"(e.g. `{next(iter(ema.ambiguous))}`); they are not guessed",
            "rename them by hand with a Rename fix", {"ambiguous": dict(ema.ambiguous)}))
    return findings


def rule_drift(ckpt: Mapping[str, TensorMeta], target: Mapping[str, TensorMeta]
               ) -> list[Finding]:
    """A known layout drift (:mod:`midaskit.drift`) whose undoing makes more keys match."""
    findings = []
    for drift in detect_drifts(ckpt):
        fix = UndoDrift(drift.name, drift.description)
        after, record = fix.apply(ckpt)
        before_n, after_n = count_matches(ckpt, target), count_matches(after, target)
        if after_n <= before_n:
            continue
        findings.append(Finding(
            Kind.DRIFT, Severity.FIX,
            f"the file has a known newer layout: {drift.description} ({len(record.keys)} keys; "
            f"{before_n} of {len(target)} keys match as is, {after_n} after undoing it)",
            "rename back to the official layout (safe: the same weights under other names)",
            {"drift": drift.name, "renamed": len(record.keys)}, (), (fix,),
            "the file was re-saved by newer code that moved or renamed layers"))
        ckpt = after
    return findings
