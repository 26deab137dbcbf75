"""The diagnosis rules: pure functions, one per finding kind, from shapes to findings.

Each rule takes a :class:`Comparison` (the checkpoint's metas after key normalisation, the target
and the keys no earlier rule has explained) and returns findings. A finding's ``keys`` are the
keys it explains; :func:`midaskit.doctor.diagnose.diagnose` removes them before the next rule.
The rules run in :data:`RULES` order, which is also the order their fixes apply in.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from ..checkpoint.types import TensorMeta
from .findings import Finding, Kind, Severity
from .fixes import (
    NUM_BATCHES_TRACKED,
    CastDtype,
    DropKeys,
    FillDerived,
    FillUnused,
    Fix,
    Rename,
    Reshape,
)
from .keytree import (
    count_params,
    fold_names,
    format_count,
    format_shape,
    module_prefixes,
    plural,
    roll_up,
    split_key,
)
from .prefixes import BOOKKEEPING_KEYS
from .renames import match_renames
from .shapes import CAUSES, ShapeContext, explain_shape
from .signatures import RUNNING_STATS, LayerKind, describe_layer, module_signatures
from .targets import Target

__all__ = [
    "Comparison",
    "RULES",
    "rule_bookkeeping",
    "rule_layer_type",
    "rule_derived_extra",
    "rule_derived_missing",
    "rule_shapes",
    "rule_renames",
    "rule_unused",
    "rule_missing",
    "rule_unexpected",
    "rule_dtype",
]

# buffers that are computed from the configuration wherever they appear (safe to drop when the
# target does not keep them); see midaskit.models.derived
KNOWN_DERIVED_LEAVES = frozenset({"relative_position_index", "attn_mask", "attention_bias_idxs"})
MAX_LISTED = 3


@dataclass(frozen=True)
class Comparison:
    """The checkpoint against the target, with the keys not yet explained.

    Attributes:
        ckpt: the checkpoint's metas after prefix / EMA normalisation, in file order.
        target: the target.
        missing: target keys absent from ``ckpt``, target order.
        unexpected: ``ckpt`` keys absent from the target, file order.
        common: keys in both, target order.
    """

    ckpt: Mapping[str, TensorMeta]
    target: Target
    missing: tuple[str, ...]
    unexpected: tuple[str, ...]
    common: tuple[str, ...]

    @classmethod
    def of(cls, ckpt: Mapping[str, TensorMeta], target: Target) -> Comparison:
        return cls(
            ckpt, target,
            tuple(k for k in target.metas if k not in ckpt),
            tuple(k for k in ckpt if k not in target.metas),
            tuple(k for k in target.metas if k in ckpt),
        )

    def without(self, keys: Iterable[str]) -> Comparison:
        gone = set(keys)
        return replace(
            self,
            missing=tuple(k for k in self.missing if k not in gone),
            unexpected=tuple(k for k in self.unexpected if k not in gone),
            common=tuple(k for k in self.common if k not in gone),
        )


def _labels(keys: Sequence[str], universe: Mapping[str, TensorMeta]) -> str:
    groups = roll_up(keys, universe)
    shown = ", ".join(f"`{g.label}`" for g in groups[:MAX_LISTED])
    more = f" and {len(groups) - MAX_LISTED} more" if len(groups) > MAX_LISTED else ""
    return f"{shown}{more} ({plural(len(keys), 'key')})"


def _ev_keys(keys: Sequence[str]) -> dict[str, Any]:
    return {"keys": list(keys), "count": len(keys)}


# --- rules on the normalised keys ------------------------------------------------------------


def rule_bookkeeping(cmp: Comparison) -> list[Finding]:
    """EMA / weight-averaging counters stored next to the weights (``n_averaged``, ``decay``)."""
    keys = [k for k in cmp.unexpected
            if split_key(k)[1] in BOOKKEEPING_KEYS and cmp.ckpt[k].numel <= 1]
    if not keys:
        return []
    reason = "counters of an EMA / weight-averaging helper, not model weights"
    return [Finding(Kind.BOOKKEEPING, Severity.FIX, f"{_labels(keys, cmp.ckpt)}: {reason}",
                    "drop them (safe)", _ev_keys(keys), tuple(keys),
                    (DropKeys(tuple(keys), reason),))]


def rule_layer_type(cmp: Comparison) -> list[Finding]:
    """A module is another kind of layer on each side (BatchNorm vs GroupNorm, conv vs linear)."""
    open_keys = set(cmp.common) | set(cmp.missing) | set(cmp.unexpected)
    ck_sigs = module_signatures({k: m for k, m in cmp.ckpt.items() if k in open_keys})
    tg_sigs = module_signatures({k: m for k, m in cmp.target.metas.items() if k in open_keys})
    groups: dict[tuple[str, str, Severity], list[str]] = {}
    for module, tg in tg_sigs.items():
        ck = ck_sigs.get(module)
        if ck is None or ck.kind == tg.kind or not _is_type_change(ck.kind, tg.kind):
            continue
        tg_type = cmp.target.module_types.get(module)
        label = (describe_layer(ck, other_type=tg_type or ""), describe_layer(tg, tg_type))
        groups.setdefault((*label, _layer_severity(ck, tg)), []).append(module)
    findings = []
    for (ck_label, tg_label, severity), modules in groups.items():
        findings.append(_layer_finding(cmp, ck_label, tg_label, severity, modules,
                                       ck_sigs, tg_sigs))
    return findings


def _is_type_change(ck_kind: str, tg_kind: str) -> bool:
    norms = set(LayerKind.NORMS)
    return {ck_kind, tg_kind} <= norms or {ck_kind, tg_kind} == {LayerKind.CONV, LayerKind.LINEAR}


def _layer_severity(ck: Any, tg: Any) -> Severity:
    if {ck.kind, tg.kind} == {LayerKind.CONV, LayerKind.LINEAR}:
        w_ck, w_tg = ck.leaves["weight"], tg.leaves["weight"]
        kernel = (w_ck if ck.kind == LayerKind.CONV else w_tg).shape[2:]
        ok = w_ck.numel == w_tg.numel and all(d == 1 for d in kernel)
        ok = ok and w_ck.shape[:2] == w_tg.shape[:2] and set(ck.leaves) == set(tg.leaves)
        return Severity.FIX if ok else Severity.ERROR
    extra = set(ck.leaves) - set(tg.leaves)
    same_affine = all(ck.leaves[n].shape == tg.leaves[n].shape for n in tg.leaves if n in ck.leaves)
    if same_affine and set(tg.leaves) <= set(ck.leaves) and extra <= set(RUNNING_STATS):
        return Severity.DECISION  # only running statistics to leave out
    return Severity.ERROR


def _layer_finding(cmp: Comparison, ck_label: str, tg_label: str, severity: Severity,
                   modules: list[str], ck_sigs: Mapping[str, Any], tg_sigs: Mapping[str, Any]
                   ) -> Finding:
    names = fold_names(modules)
    shown = ", ".join(f"`{n}`" for n in names[:MAX_LISTED])
    shown += f" and {len(names) - MAX_LISTED} more" if len(names) > MAX_LISTED else ""
    who = f"{shown} is" if len(modules) == 1 else f"{len(modules)} layers ({shown}) are"
    message = f"{who} {ck_label} in the checkpoint and {tg_label} in {cmp.target.name}"
    keys = [f"{m}.{leaf}" for m in modules for leaf in {**ck_sigs[m].leaves, **tg_sigs[m].leaves}]
    fixes: tuple[Fix, ...] = ()
    if severity is Severity.FIX:
        shapes = tuple((f"{m}.weight", tg_sigs[m].leaves["weight"].shape) for m in modules)
        fixes = (Reshape(shapes, "a 1x1 conv and a linear layer hold the same weights"),)
        remedy = "reshape the weights (safe: the same numbers, another layout)"
    elif severity is Severity.DECISION:
        drop = tuple(f"{m}.{leaf}" for m in modules
                     for leaf in ck_sigs[m].leaves if leaf not in tg_sigs[m].leaves)
        fixes = (DropKeys(drop, f"running statistics that {tg_label} does not have", safe=False,
                          allow_as="drop-running-stats"),)
        remedy = ("build your model with the checkpoint's layer type to use these weights as "
                  "trained; or drop the running statistics (--allow drop-running-stats): the "
                  "affine weights load, but the outputs change until you fine-tune")
    else:
        remedy = "build your model with the checkpoint's layer type; the weights cannot be " \
                 "converted"
    evidence = {"modules": modules, "checkpoint": ck_label, "target": tg_label,
                "checkpoint_entries": sorted(ck_sigs[modules[0]].leaves),
                "target_entries": sorted(tg_sigs[modules[0]].leaves)}
    cause = f"the checkpoint was trained with {ck_label} where {cmp.target.name} has {tg_label}"
    return Finding(Kind.LAYER_TYPE, severity, message, remedy, evidence, tuple(keys), fixes,
                   cause)


def rule_derived_extra(cmp: Comparison) -> list[Finding]:
    """The file stores computed buffers the target keeps out of its state dict (verify, drop),
    and ``num_batches_tracked`` of BatchNorms the target builds without it."""
    target = cmp.target
    target_modules = {p for k in target.metas for p in module_prefixes(k)}
    extra, nbt, wrong = [], [], []
    for k in cmp.unexpected:
        module, leaf = split_key(k)
        if k in target.non_persistent:
            meta = target.non_persistent[k]
            (wrong if meta is not None and meta.shape != cmp.ckpt[k].shape else extra).append(k)
        elif leaf == NUM_BATCHES_TRACKED and module in target_modules:
            nbt.append(k)
        elif leaf in KNOWN_DERIVED_LEAVES and module in target_modules:
            extra.append(k)
    findings = []
    if extra:
        checkable = target.derive is not None and all(k in target.derived for k in extra)
        timm = " (timm >= 0.9 made it non-persistent)" if any(
            split_key(k)[1] == "relative_position_index" for k in extra) else ""
        check = "checked against the computed values, then dropped" if checkable else "dropped"
        reason = f"buffers {target.name} computes itself and keeps out of its state dict{timm}"
        findings.append(Finding(
            Kind.DERIVED_EXTRA, Severity.FIX,
            f"the file stores {_labels(extra, cmp.ckpt)}, which {target.name} computes itself "
            f"and keeps out of its state dict{timm}", f"{check} (safe)", _ev_keys(extra),
            tuple(extra), (DropKeys(tuple(extra), reason,
                                    expected=target.derive if checkable else None),),
            "the file stores computed buffers that your model (newer code) does not keep"))
    if wrong:
        findings.append(Finding(
            Kind.DERIVED_EXTRA, Severity.ERROR,
            f"the file stores {_labels(wrong, cmp.ckpt)} with other shapes than {target.name} "
            f"computes (e.g. {format_shape(cmp.ckpt[wrong[0]].shape)} vs "
            f"{format_shape(target.non_persistent[wrong[0]].shape)})",  # type: ignore[union-attr]
            "build the model for the input size the checkpoint was made for",
            _ev_keys(wrong), tuple(wrong), (), CAUSES["derived"]))
    if nbt:
        findings.append(Finding(
            Kind.NUM_BATCHES_TRACKED, Severity.FIX,
            f"the file has `num_batches_tracked` for {len(nbt)} BatchNorm layers that "
            f"{target.name} builds without it", "drop them (safe: a training step counter)",
            _ev_keys(nbt), tuple(nbt), (DropKeys(tuple(nbt), "BatchNorm step counters"),)))
    return findings


def rule_derived_missing(cmp: Comparison) -> list[Finding]:
    """The file lacks buffers that are computed: fill them (``num_batches_tracked`` = 0)."""
    target = cmp.target
    present_modules = {split_key(k)[0] for k in cmp.ckpt}
    learned_modules = {split_key(k)[0] for k in target.metas if k not in target.derived}
    # a derived buffer is worth filling only where its layer is there (or has nothing learned)
    fillable = [k for k in cmp.missing if k in target.derived and (
        split_key(k)[0] in present_modules or split_key(k)[0] not in learned_modules)]
    nbt = [k for k in fillable if split_key(k)[1] == NUM_BATCHES_TRACKED]
    other = [k for k in fillable if k not in nbt]
    findings = []
    if nbt:
        findings.append(Finding(
            Kind.NUM_BATCHES_TRACKED, Severity.FIX,
            f"{len(nbt)} BatchNorm layers lack `num_batches_tracked` in the file (saved before "
            "PyTorch 0.4.1, or by code that strips it)",
            "fill 0 (safe: it only counts training steps, eval mode never reads it)",
            _ev_keys(nbt), tuple(nbt),
            (FillDerived(tuple(nbt), tuple((k, target.metas[k]) for k in nbt),
                         "BatchNorm step counters: 0", target.derive),),
            "the file is older than PyTorch 0.4.1's BatchNorm counter"))
    if other:
        message = (f"the file lacks {_labels(other, target.metas)}, which are computed from the "
                   "configuration, not learned (a file re-saved from newer code)")
        if target.derive is None:
            findings.append(Finding(
                Kind.DERIVED_MISSING, Severity.ERROR, message,
                "compare against the model itself (--model), which can compute them",
                _ev_keys(other), tuple(other), (), "the file leaves out computed buffers"))
        else:
            findings.append(Finding(
                Kind.DERIVED_MISSING, Severity.FIX, message, "compute and add them (safe)",
                _ev_keys(other), tuple(other),
                (FillDerived(tuple(other), tuple((k, target.metas[k]) for k in other),
                             derive=target.derive),),
                "the file leaves out computed buffers (saved by newer code)"))
    return findings


def rule_shapes(cmp: Comparison) -> list[Finding]:
    """Keys present on both sides with other shapes, explained per module and grouped by cause."""
    ctx = ShapeContext.of(cmp.target.metas, cmp.target.name)
    by_module: dict[str, list[str]] = {}
    for k in cmp.common:
        if cmp.ckpt[k].shape != cmp.target.metas[k].shape:
            by_module.setdefault(split_key(k)[0], []).append(k)
    per_cause: dict[str, list[tuple[Any, list[str]]]] = {}
    for keys in by_module.values():
        main = next((k for k in keys if split_key(k)[1] == "weight"), keys[0])
        derived = all(k in cmp.target.derived for k in keys)
        expl = explain_shape(main, cmp.ckpt[main], cmp.target.metas[main], ctx, derived=derived)
        if derived and cmp.target.derive is None:
            expl = replace(expl, severity=Severity.ERROR,
                           remedy="compare against the model itself (--model) to recompute it")
        per_cause.setdefault(expl.cause, []).append((expl, keys))
    findings = []
    for cause, items in per_cause.items():
        keys = [k for _, ks in items for k in ks]
        first = items[0][0]
        message = first.message
        if len(items) > 1:
            others = fold_names([split_key(ks[0])[0] for _, ks in items[1:]])
            message += f"; the same in {len(items) - 1} more layers ({', '.join(others[:4])}" \
                       + (", ..." if len(others) > 4 else "") + ")"
        fixes = tuple(f for e, _ in items for f in e.fixes)
        if cause == "derived" and first.severity is Severity.FIX:
            fixes = (DropKeys(tuple(keys), "computed for another input size"),
                     FillDerived(tuple(keys), tuple((k, cmp.target.metas[k]) for k in keys),
                                 derive=cmp.target.derive))
        evidence = {"cause": cause, "tensors": [
            {"key": k, "checkpoint": list(cmp.ckpt[k].shape),
             "target": list(cmp.target.metas[k].shape)} for k in keys]}
        severity = max((e.severity for e, _ in items), key=lambda s: s.rank)
        findings.append(Finding(Kind.SHAPE, severity, message, first.remedy, evidence,
                                tuple(keys), fixes, CAUSES[cause]))
    return findings


def rule_renames(cmp: Comparison) -> list[Finding]:
    """The same shapes under other names: certain subtree swaps, proposals, ambiguities."""
    if not cmp.missing or not cmp.unexpected:
        return []
    match = match_renames(cmp.missing, cmp.unexpected, cmp.ckpt, cmp.target.metas)
    findings = []
    for (old, new), pairs in match.certain.items():
        findings.append(Finding(
            Kind.RENAME, Severity.FIX,
            f"`{old.rstrip('.')}` in the checkpoint is `{new.rstrip('.')}` in {cmp.target.name} "
            f"({len(pairs)} keys, same shapes)", "rename (safe: the whole module maps one to one)",
            {"mapping": dict(pairs)}, tuple(k for p in pairs for k in p),
            (Rename(tuple(pairs), f"module `{old.rstrip('.')}` renamed to `{new.rstrip('.')}`"),),
            "the checkpoint comes from a code version with other module names"))
    if match.proposed:
        pairs = match.proposed
        sample = "; ".join(f"`{u}` -> `{m}`" for u, m in pairs[:MAX_LISTED])
        findings.append(Finding(
            Kind.RENAME, Severity.DECISION,
            f"{len(pairs)} keys have the same shapes in the same order under other names; "
            f"proposed mapping: {sample}" + (" ..." if len(pairs) > MAX_LISTED else ""),
            "check the mapping, then apply it with --allow rename",
            {"mapping": dict(pairs)}, tuple(k for p in pairs for k in p),
            (Rename(tuple(pairs), "same shapes in the same order", safe=False),),
            "the checkpoint comes from a code version with other module names"))
    if match.ambiguous:
        first, cands = next(iter(match.ambiguous.items()))
        findings.append(Finding(
            Kind.RENAME_AMBIGUOUS, Severity.INFO,
            f"{len(match.ambiguous)} missing keys could each be one of several checkpoint keys "
            f"of the same shape (e.g. `{first}`: {', '.join(f'`{c}`' for c in cands[:3])}); "
            "not guessed", "rename them by hand (a Rename fix) if you know the mapping",
            {"ambiguous": dict(match.ambiguous)}))
    return findings


def rule_unused(cmp: Comparison) -> list[Finding]:
    """Keys the target loads but never uses: fill them if missing, mention them if present."""
    unused = cmp.target.unused
    missing = [k for k in cmp.missing if k in unused]
    present = [k for k in cmp.common if k in unused]
    findings = []
    if missing:
        findings.append(Finding(
            Kind.UNUSED, Severity.FIX,
            f"the file lacks {_labels(missing, cmp.target.metas)}, which {cmp.target.name} "
            "loads but never uses in forward", "fill them with zeros (safe: never read)",
            _ev_keys(missing), tuple(missing),
            (FillUnused(tuple((k, cmp.target.metas[k]) for k in missing)),)))
    if present:
        findings.append(Finding(
            Kind.UNUSED, Severity.INFO,
            f"{_labels(present, cmp.target.metas)} load but are never used in forward", "",
            _ev_keys(present)))
    return findings


def _groups_evidence(keys: Sequence[str], universe: Mapping[str, TensorMeta]) -> list[dict]:
    total = count_params(universe) or 1
    return [{"label": g.label, "keys": len(g.keys), "params": g.params,
             "share": round(g.params / total, 4), "units": g.units}
            for g in roll_up(keys, universe)]


def _share(share: float) -> str:
    return "<1%" if 0 < share < 0.005 else f"{share:.0%}"


def _describe_groups(groups: list[dict], whole: str) -> str:
    parts = []
    for g in groups[:MAX_LISTED]:
        what = ", ".join(x for x in (
            g["units"] or plural(g["keys"], "key"),
            f"{format_count(g['params'])} params" if g["params"] else "",
            f"{_share(g['share'])} of {whole}" if g["params"] else "") if x)
        parts.append(f"`{g['label']}` ({what})")
    more = f" and {len(groups) - MAX_LISTED} more groups" if len(groups) > MAX_LISTED else ""
    return "; ".join(parts) + more


def rule_missing(cmp: Comparison) -> list[Finding]:
    """Target keys nothing explains, rolled up to whole subtrees."""
    if not cmp.missing:
        return []
    groups = _groups_evidence(cmp.missing, cmp.target.metas)
    share = count_params(cmp.target.metas, cmp.missing) / (count_params(cmp.target.metas) or 1)
    verb = "is" if len(groups) == 1 and groups[0]["keys"] == 1 else "are"
    message = f"{_describe_groups(groups, 'the model')} {verb} missing from the checkpoint"
    unexpected_share = count_params(cmp.ckpt, cmp.unexpected) / (count_params(cmp.ckpt) or 1)
    if len(cmp.missing) == len(cmp.target.metas):
        cause = "the checkpoint is for another architecture: none of your model's keys is in it"
    elif share > 0.5 and unexpected_share > 0.3:
        cause = "the checkpoint is for another architecture or backbone: most layers differ"
    elif share > 0.5:
        cause = "the checkpoint comes from another, smaller model"
    else:
        cause = "the checkpoint lacks part of your model (saved from a smaller or older model)"
    return [Finding(Kind.MISSING, Severity.ERROR, message,
                    "use the checkpoint that matches your model; loading with strict=False would "
                    "leave these layers random", {"groups": groups, **_ev_keys(cmp.missing)},
                    cmp.missing, (), cause)]


def rule_unexpected(cmp: Comparison) -> list[Finding]:
    """Checkpoint keys nothing explains, rolled up; dropping them is the user's decision."""
    if not cmp.unexpected:
        return []
    groups = _groups_evidence(cmp.unexpected, cmp.ckpt)
    verb = "is" if len(groups) == 1 and groups[0]["keys"] == 1 else "are"
    message = (f"{_describe_groups(groups, 'the checkpoint')} {verb} in the checkpoint but not "
               f"in {cmp.target.name}")
    return [Finding(Kind.UNEXPECTED, Severity.DECISION, message,
                    "drop them if your model really has no such layers (--allow "
                    "drop-unexpected)", {"groups": groups, **_ev_keys(cmp.unexpected)},
                    cmp.unexpected,
                    (DropKeys(cmp.unexpected, "not in the target model", safe=False,
                              allow_as="drop-unexpected"),),
                    "the checkpoint holds layers your model does not have")]


def rule_dtype(cmp: Comparison) -> list[Finding]:
    """Dtype differences on shared keys: widening casts are safe; narrowing is noted."""
    pairs: dict[tuple[str, str], list[str]] = {}
    for k, tg in cmp.target.metas.items():
        ck = cmp.ckpt.get(k)
        if ck is not None and ck.dtype != tg.dtype and ck.is_floating == tg.is_floating:
            pairs.setdefault((ck.dtype, tg.dtype), []).append(k)
    findings = []
    floating = [k for k, m in cmp.ckpt.items() if m.is_floating]
    for (src, dst), keys in pairs.items():
        whole = cmp.ckpt[keys[0]].is_floating and len(pairs) == 1 and set(keys) == set(floating)
        which = f"all {len(keys)} floating-point tensors" if whole else _labels(keys, cmp.ckpt)
        what = f"{which} are {src} in the file and {dst} in {cmp.target.name}"
        if CastDtype.is_widening(src, dst):
            fix = CastDtype(dst, () if whole else tuple(keys), f"{src} to {dst} is exact")
            findings.append(Finding(Kind.DTYPE, Severity.FIX, what,
                                    f"cast to {dst} (safe: exact)", _ev_keys(keys), (), (fix,),
                                    f"the checkpoint was saved in {src}"))
        else:
            findings.append(Finding(Kind.DTYPE, Severity.INFO, what + "; load_state_dict casts "
                                    "them, with the precision of your model", "", _ev_keys(keys)))
    return findings


Rule = Callable[[Comparison], list[Finding]]

# the order rules run in; each rule sees only the keys earlier rules left unexplained
RULES: tuple[Rule, ...] = (
    rule_bookkeeping,
    rule_layer_type,
    rule_derived_extra,
    rule_derived_missing,
    rule_shapes,
    rule_renames,
    rule_unused,
    rule_missing,
    rule_unexpected,
    rule_dtype,
)
