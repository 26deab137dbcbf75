"""Key prefixes and EMA key styles: which change of prefix makes a checkpoint's keys match.

Wrappers add a prefix to every key: ``module.`` (DataParallel / DDP), ``_orig_mod.``
(``torch.compile``), ``model.`` / ``net.`` / ``backbone.`` (Lightning modules and wrappers),
``core.core.`` (ZoeDepth), stacked in any order. A checkpoint saved from an inner module lacks the
prefix the target has. Some EMA helpers store keys with the dots replaced by ``_`` (or removed),
because buffer names may not contain dots. Pure functions on key lists.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from ..checkpoint.types import TensorMeta

__all__ = [
    "KNOWN_PREFIXES",
    "BOOKKEEPING_KEYS",
    "PrefixChange",
    "UnderscoreMatch",
    "find_prefix_change",
    "find_underscore_match",
    "split_known",
    "common_prefix_chain",
    "count_matches",
]

# prefix -> what puts it there (used in messages: "saved through <this>")
KNOWN_PREFIXES: dict[str, str] = {
    "module.": "a DataParallel / DistributedDataParallel wrapper",
    "_orig_mod.": "torch.compile",
    "core.core.": "ZoeDepth, which keeps the MiDaS model under core.core.",
    "model.": "a wrapper holding the network as `model` (a Lightning module or similar)",
    "net.": "a wrapper holding the network as `net`",
    "backbone.": "a wrapper holding the network as `backbone`",
    "ema.": "an EMA wrapper",
    "model_ema.": "an EMA wrapper",
}

# scalars that EMA and averaging helpers store next to the weights (never model weights)
BOOKKEEPING_KEYS = frozenset({"decay", "num_updates", "n_averaged", "optimization_step"})


@dataclass(frozen=True)
class PrefixChange:
    """Strip ``strip`` from the keys that have it, then add ``add`` in front of every key.

    Attributes:
        matched: target keys matched after the change.
        baseline: target keys matched without it.
    """

    strip: str
    add: str
    matched: int
    baseline: int

    @property
    def is_change(self) -> bool:
        return bool(self.strip or self.add) and self.matched > self.baseline


@dataclass(frozen=True)
class UnderscoreMatch:
    """EMA-style keys mapped back to the target's dotted keys.

    Attributes:
        strip: the dotted prefix stripped before matching (``"model_ema."``), possibly ``""``.
        mapping: checkpoint key (after ``strip``) -> target key.
        separator: what replaced the dots: ``"_"`` or ``""``.
        ambiguous: checkpoint key -> the several target keys it could be.
    """

    strip: str
    mapping: dict[str, str]
    separator: str
    ambiguous: dict[str, list[str]] = field(default_factory=dict)


def common_prefix_chain(keys: Iterable[str], share: float = 0.5) -> list[str]:
    """Dotted prefixes shared by more than ``share`` of the dotted keys, shortest first.

    ``["module._orig_mod.a.w", "module._orig_mod.b.w"]`` -> ``["module.", "module._orig_mod."]``.
    """
    dotted = [k for k in keys if "." in k]
    chain: list[str] = []
    prefix = ""
    while dotted:
        counts: dict[str, int] = {}
        for k in dotted:
            rest = k[len(prefix):]
            if "." in rest:
                head = rest.split(".", 1)[0] + "."
                counts[head] = counts.get(head, 0) + 1
        if not counts:
            break
        head, n = max(counts.items(), key=lambda kv: kv[1])
        if n <= share * len(dotted):
            break
        prefix += head
        chain.append(prefix)
        dotted = [k for k in dotted if k.startswith(prefix)]
    return chain


def _apply(keys: Iterable[str], strip: str, add: str) -> list[str]:
    return [add + (k[len(strip):] if strip and k.startswith(strip) else k) for k in keys]


def count_matches(ckpt: Mapping[str, TensorMeta], target: Mapping[str, TensorMeta],
                  strip: str = "", add: str = "") -> int:
    """Checkpoint keys that, renamed, are target keys of the same shape."""
    return sum(
        new in target and target[new].shape == meta.shape
        for new, meta in zip(_apply(ckpt, strip, add), ckpt.values(), strict=True)
    )


def find_prefix_change(ckpt: Mapping[str, TensorMeta], target: Mapping[str, TensorMeta]
                       ) -> PrefixChange:
    """The strip/add pair that matches the most target keys by name and shape (ties: the
    smallest change)."""
    baseline = count_matches(ckpt, target, "", "")
    # suffix index: remainder r -> prefixes q with q + r a target key
    index: dict[str, set[str]] = {}
    for t in target:
        parts = t.split(".")
        for i in range(len(parts)):
            index.setdefault(".".join(parts[i:]), set()).add(".".join(parts[:i]) + "." if i else "")
    best = PrefixChange("", "", baseline, baseline)
    for strip in ["", *common_prefix_chain(ckpt)]:
        adds: set[str] = set()
        for k in ckpt:
            rest = k[len(strip):] if strip and k.startswith(strip) else k
            adds.update(index.get(rest, ()))
        for add in sorted(adds, key=len):
            if not strip and not add:
                continue
            matched = count_matches(ckpt, target, strip, add)
            size = len(strip) + len(add)
            if matched > best.matched or (
                matched == best.matched and best.is_change and size < len(best.strip + best.add)
            ):
                best = PrefixChange(strip, add, matched, baseline)
    return best


def split_known(prefix: str) -> list[str]:
    """Split a stacked prefix into known wrapper prefixes where possible.

    ``"module._orig_mod."`` -> ``["module.", "_orig_mod."]``; unknown parts stay together.
    """
    out: list[str] = []
    rest = prefix
    unknown = ""
    while rest:
        known = next((p for p in sorted(KNOWN_PREFIXES, key=len, reverse=True)
                      if rest.startswith(p)), None)
        if known:
            if unknown:
                out.append(unknown)
                unknown = ""
            out.append(known)
            rest = rest[len(known):]
        else:
            head, _, rest = rest.partition(".")
            unknown += head + "."
    if unknown:
        out.append(unknown)
    return out


def find_underscore_match(ckpt_keys: Sequence[str], target_keys: Sequence[str]
                          ) -> UnderscoreMatch | None:
    """Map keys whose dots became ``_`` (or vanished) back to target keys, if most of them do.

    Returns ``None`` unless at least half of the checkpoint's (non-bookkeeping) keys map.
    """
    chain = common_prefix_chain(ckpt_keys)
    strip = chain[-1] if chain else ""
    rest = [k[len(strip):] if k.startswith(strip) else k for k in ckpt_keys]
    flat = [k for k in rest if "." not in k and k not in BOOKKEEPING_KEYS]
    if not flat or len(flat) < 0.5 * len(ckpt_keys):
        return None
    lcp = os.path.commonprefix(flat)[:64]
    best: UnderscoreMatch | None = None
    for sep in ("_", ""):
        forms: dict[str, list[str]] = {}
        for t in target_keys:
            forms.setdefault(t.replace(".", sep), []).append(t)
        cut_points = [0] + [i + 1 for i, ch in enumerate(lcp) if sep == "" or ch == sep]
        for cut in cut_points:
            mapping: dict[str, str] = {}
            ambiguous: dict[str, list[str]] = {}
            for k in flat:
                hits = forms.get(k[cut:], [])
                if len(hits) == 1:
                    mapping[k] = hits[0]
                elif hits:
                    ambiguous[k] = hits
            if len(mapping) >= 0.5 * len(flat) and (
                best is None or len(mapping) > len(best.mapping)
            ):
                best = UnderscoreMatch(strip, mapping, sep, ambiguous)
    return best
