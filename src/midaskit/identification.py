"""Which MiDaS variant is this checkpoint? Answered from key names and shapes alone.

Every variant's official layout is scored against the file's keys (after the known prefixes and
drifts are undone); the near twins differ in shapes (BEiT-L 512 vs 384 in the relative-position
tables, SwinV2 L/B/T in widths), so a key-and-shape F1 ranks them apart. Relatives that are not
MiDaS (Depth-Anything, transformers DPT, ZoeDepth) are recognised by name first. No torch import.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from .checkpoint.types import TensorMeta
from .drift import detect_drifts, undo_drift_key
from .errors import MidaskitError
from .layouts import load_layout
from .variants import all_variants, get_variant

__all__ = ["Candidate", "Identification", "identify", "identify_metas", "normalize_keys"]

# a file whose best variant scores below this is "not a MiDaS checkpoint"
CONFIDENT_SCORE = 0.9

# (regex on keys, name of the relative): layouts that are not MiDaS files but often meet them
_RELATIVES: tuple[tuple[str, str], ...] = (
    (r"^(.*\.)?pretrained\.blocks\.\d+\.ls1\.gamma$",
     "a Depth-Anything (DINOv2 ViT) checkpoint, not a MiDaS one"),
    (r"^(dpt\.|neck\.reassemble_stage\.|neck\.fusion_stage\.|backbone\.embeddings\.)",
     "a transformers DPTForDepthEstimation checkpoint (HF layout), not an official MiDaS file"),
)
_ROOTS = re.compile(r"(^|\.)(pretrained|scratch)\.")


@dataclass(frozen=True)
class Candidate:
    """How well one variant's official layout fits the checkpoint.

    Attributes:
        variant: the variant name.
        score: F1 of (key, shape) matches over learned entries, 1.0 for an exact layout.
        matched: entries with the same key and shape.
        missing: official entries absent from the file.
        unexpected: file entries the variant does not have.
        mismatched: entries present in both with different shapes.
    """

    variant: str
    score: float
    matched: int
    missing: int
    unexpected: int
    mismatched: int


@dataclass(frozen=True)
class Identification:
    """The answer of :func:`identify`, with its evidence.

    Attributes:
        variant: the identified variant, or None when no variant fits well enough.
        candidates: every variant ranked, best first.
        evidence: facts read off the shapes (patch size, width, depth, grid, window, ...).
        prefix: the key prefix that was stripped (e.g. ``"module."``), ``""`` for none.
        drifts: names of known layout drifts found (e.g. ``"swin-timm09-layout"``).
        relative: the name of a non-MiDaS layout the file was recognised as, if any.
        wrapper: a known wrapper around a MiDaS model (``"ZoeDepth"``), if any.
        unsafe_globals: Python objects besides tensors that the file's pickle names (read as
            inert placeholders here; ``load`` refuses such a file).
    """

    variant: str | None
    candidates: list[Candidate]
    evidence: list[str] = field(default_factory=list)
    prefix: str = ""
    drifts: list[str] = field(default_factory=list)
    relative: str | None = None
    wrapper: str | None = None
    unsafe_globals: tuple[str, ...] = ()

    @property
    def best(self) -> Candidate | None:
        return self.candidates[0] if self.candidates else None

    def summary(self) -> str:
        """One line for humans."""
        if self.relative:
            return f"this is {self.relative}"
        if self.variant:
            head = f"{self.variant} (MiDaS {get_variant(self.variant).version})"
            extras = [f"inside {self.wrapper}"] if self.wrapper else []
            if self.prefix:
                extras.append(f"keys prefixed {self.prefix!r}")
            extras += [f"layout drift: {d}" for d in self.drifts]
            return head + (f" [{'; '.join(extras)}]" if extras else "")
        best = self.best
        closest = f"; the closest is {best.variant} (score {best.score:.2f})" if best else ""
        return f"not a MiDaS checkpoint{closest}"


def _common_root_prefix(keys: list[str]) -> str:
    """The most common text before ``pretrained.``/``scratch.`` (stacked prefixes included)."""
    prefixes = Counter()
    for key in keys:
        m = _ROOTS.search(key)
        if m:
            prefixes[key[: m.start(2)]] += 1
    if not prefixes:
        return ""
    prefix, count = prefixes.most_common(1)[0]
    return prefix if count >= max(1, len(keys) // 2) else ""


def normalize_keys(
    metas: Mapping[str, TensorMeta],
) -> tuple[dict[str, TensorMeta], str, list[str]]:
    """Strip the common prefix and undo known drifts; returns ``(metas, prefix, drift names)``."""
    keys = list(metas)
    prefix = _common_root_prefix(keys)
    stripped = {k[len(prefix):]: m for k, m in metas.items() if k.startswith(prefix)}
    drifts = detect_drifts(stripped)
    for drift in drifts:
        stripped = {undo_drift_key(k, drift): m for k, m in stripped.items()}
    return stripped, prefix, [d.name for d in drifts]


def _score(metas: Mapping[str, TensorMeta], variant: str) -> Candidate:
    layout = load_layout(variant)
    # derived buffers may be absent (newer timm) or present: leave them out of the score
    ours = {k: m.shape for k, m in layout.metas.items() if k not in layout.derived}
    theirs = {k: m.shape for k, m in metas.items()
              if k not in layout.derived and not k.endswith((".relative_position_index",
                                                             ".attn_mask"))}
    common = ours.keys() & theirs.keys()
    matched = sum(1 for k in common if ours[k] == theirs[k])
    total = len(ours) + len(theirs)
    return Candidate(
        variant=variant,
        score=2 * matched / total if total else 0.0,
        matched=matched,
        missing=len(ours.keys() - theirs.keys()),
        unexpected=len(theirs.keys() - ours.keys()),
        mismatched=len(common) - matched,
    )


def _shape(metas: Mapping[str, TensorMeta], key: str) -> tuple[int, ...] | None:
    meta = metas.get(key)
    return meta.shape if meta else None


def _max_index(metas: Mapping[str, TensorMeta], pattern: str) -> int | None:
    found = [int(m.group(1)) for k in metas if (m := re.match(pattern, k))]
    return max(found) + 1 if found else None


def _evidence(metas: Mapping[str, TensorMeta]) -> list[str]:
    """Facts read off the shapes, in the words of FIELD-NOTES section 8."""
    facts: list[str] = []
    pe = _shape(metas, "pretrained.model.patch_embed.proj.weight")
    if pe and len(pe) == 4:
        facts.append(f"patch embedding {pe[2]}x{pe[3]}, width {pe[0]}")
    depth = _max_index(metas, r"pretrained\.model\.blocks\.(\d+)\.")
    if depth:
        facts.append(f"{depth} transformer blocks")
    table = _shape(metas, "pretrained.model.blocks.0.attn.relative_position_bias_table")
    if table:
        side = round(((table[0] - 3) ** 0.5 + 1) / 2)
        facts.append(f"BEiT relative-position table {table[0]}x{table[1]}: window {side}x{side} "
                     f"({side * 16} px input), {table[1]} heads")
    pos = _shape(metas, "pretrained.model.pos_embed")
    if pos and len(pos) == 3:
        grid = round((pos[1] - 1) ** 0.5)
        facts.append(f"position embedding for a {grid}x{grid} grid (+1 class token)")
    if "pretrained.model.layers.0.blocks.0.attn.logit_scale" in metas:
        facts.append("SwinV2 cosine attention (logit_scale)")
    stages = [_max_index(metas, rf"pretrained\.model\.layers\.{i}\.blocks\.(\d+)\.")
              for i in range(4)]
    if any(stages):
        facts.append(f"Swin stage depths {[s or 0 for s in stages]}")
    mask = _shape(metas, "pretrained.model.layers.0.blocks.1.attn_mask")
    if mask:
        facts.append(f"attention window {round(mask[1] ** 0.5)}x{round(mask[1] ** 0.5)}")
    if "pretrained.model.patch_embed.backbone.stem.conv.weight" in metas:
        facts.append("ResNet-50 hybrid stem (DPT-Hybrid)")
    if "scratch.stem_transpose.0.c.weight" in metas or any(
        k.startswith("scratch.stem_transpose.") for k in metas
    ):
        facts.append("3-level decoder with a transposed-conv stem (LeViT)")
    stem = _shape(metas, "pretrained.layer1.0.weight")
    if stem:
        facts.append(f"v2.1 encoder stem conv {stem[0]}x{stem[1]}x{stem[2]}x{stem[3]}")
    fusion = _shape(metas, "scratch.layer1_rn.weight")
    if fusion:
        facts.append(f"decoder width {fusion[0]}")
    return facts


def identify_metas(metas: Mapping[str, TensorMeta]) -> Identification:
    """Identify a checkpoint from its key -> :class:`TensorMeta` map (pure; no I/O)."""
    keys = list(metas)
    for pattern, name in _RELATIVES:
        if any(re.search(pattern, k) for k in keys):
            return Identification(variant=None, candidates=[], relative=name)
    normalized, prefix, drifts = normalize_keys(metas)
    wrapper = "ZoeDepth" if "core.core." in prefix else None
    candidates = sorted(
        (_score(normalized, spec.name) for spec in all_variants()),
        key=lambda c: (-c.score, c.variant),
    )
    best = candidates[0]
    confident = best.score >= CONFIDENT_SCORE and (
        len(candidates) < 2 or candidates[1].score < best.score
    )
    return Identification(
        variant=best.variant if confident else None,
        candidates=candidates,
        evidence=_evidence(normalized),
        prefix=prefix,
        drifts=drifts,
        wrapper=wrapper,
    )


def identify(path: str | Path) -> Identification:
    """Identify the MiDaS variant of a checkpoint file (or a transformers folder) from its
    metadata: no tensor bytes are read.

    Unknown objects in the pickle are read as inert placeholders and listed in
    ``unsafe_globals``; nothing from the file runs.

    Raises:
        CheckpointFormatError: the file is not a readable checkpoint.
    """
    from .checkpoint import find_state_dict, open_checkpoint
    from .interop.hf import hf_to_official, hf_weights_file, is_hf_layout, read_hf_config

    path = Path(path)
    weights = hf_weights_file(path) if path.is_dir() else path
    with open_checkpoint(weights, mode="inspect") as ckpt:
        found = find_state_dict(ckpt.root, source=weights.name)
        tensors = found.tensors
        wrapper = None
        if is_hf_layout(tensors):
            try:
                _, tensors = hf_to_official(tensors, read_hf_config(path))
                wrapper = "a transformers DPTForDepthEstimation checkpoint"
            except MidaskitError:
                pass  # not a supported DPT: identify_metas names the transformers layout
        metas = {k: t.meta for k, t in tensors.items()}
        unsafe = tuple(ckpt.unsafe_globals)
    result = identify_metas(metas)
    return replace(result, unsafe_globals=unsafe, wrapper=wrapper or result.wrapper)
