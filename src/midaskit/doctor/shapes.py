"""Explanations of shape mismatches: input channels, classes, position-embedding grids, kernels.

:func:`explain_shape` turns one module's mismatching tensors into a :class:`ShapeExplanation`
with a cause code, plain words and, for a first conv, the fix that adapts its input channels.
Pure functions on shapes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from ..checkpoint.types import TensorMeta
from .findings import Severity
from .fixes import AdaptInputChannels, Fix
from .keytree import format_shape, split_key

__all__ = ["ShapeExplanation", "ShapeContext", "explain_shape", "CAUSES"]

POS_EMBED_LEAVES = frozenset({
    "pos_embed", "absolute_pos_embed", "position_embeddings", "pos_embedding",
    "positional_embedding",
})
HEAD_WORDS = ("head", "fc", "classifier", "logits", "cls")

# cause code -> the likely cause, as the report's last line says it
CAUSES: dict[str, str] = {
    "input-channels": "the checkpoint was trained on input with another number of channels",
    "classes": "the checkpoint's head was trained for another number of classes",
    "outputs": "the checkpoint's last layer produces another number of outputs",
    "pos-embed": "the checkpoint was trained at another input resolution",
    "rel-pos-table": "the checkpoint was trained at another input resolution or window size",
    "kernel-size": "the checkpoint's layers use another kernel size",
    "rank": "the checkpoint stores these tensors with another number of dimensions",
    "width": "the checkpoint comes from a model of another size (other layer widths)",
    "derived": "computed buffers in the file were made for another input size",
}


@dataclass(frozen=True)
class ShapeContext:
    """Facts about the target that explanations need.

    Attributes:
        first_conv: the first conv weight key in the target's order (takes the image).
        last_module: the module of the last weight in the target's order (the head).
        patch: the patch size of a ``patch_embed.proj`` conv, if any.
        target_name: how messages call the target.
    """

    first_conv: str | None
    last_module: str | None
    patch: int | None
    target_name: str

    @classmethod
    def of(cls, metas: Mapping[str, TensorMeta], target_name: str) -> ShapeContext:
        weights = [(k, m) for k, m in metas.items()
                   if split_key(k)[1] == "weight" and len(m.shape) >= 2 and m.is_floating]
        first_conv = next((k for k, m in weights if len(m.shape) in (3, 4, 5)), None)
        last_module = split_key(weights[-1][0])[0] if weights else None
        patch = next((m.shape[-1] for k, m in metas.items()
                      if k.endswith("patch_embed.proj.weight") and len(m.shape) == 4), None)
        return cls(first_conv, last_module, patch, target_name)


@dataclass(frozen=True)
class ShapeExplanation:
    """Why one module's tensors have other shapes.

    Attributes:
        cause: a key of :data:`CAUSES`.
        message: plain words naming the key and both shapes.
        remedy: what to do.
        severity: :class:`Severity.DECISION` when a lossy fix exists, else ERROR.
        fixes: the fix, for a first conv's input channels.
    """

    cause: str
    message: str
    remedy: str
    severity: Severity = Severity.ERROR
    fixes: tuple[Fix, ...] = ()


def _square_grid(tokens: int, prefixes: tuple[int, ...] = (1, 0, 2, 4, 5)) -> list[tuple[int, int]]:
    """``(grid, prefix tokens)`` pairs with ``grid**2 + prefix == tokens``, most likely first."""
    out = []
    for p in prefixes:
        g = math.isqrt(max(tokens - p, 0))
        if g > 0 and g * g == tokens - p:
            out.append((g, p))
    return out


def _pos_embed_grids(n_ck: int, n_tg: int) -> tuple[int, int, int] | None:
    """``(grid_ckpt, grid_target, prefix_tokens)`` with one prefix count for both, if any."""
    tg = dict((p, g) for g, p in _square_grid(n_tg))
    for g, p in _square_grid(n_ck):
        if p in tg:
            return g, tg[p], p
    return None


def _rel_table_grid(rows: int) -> tuple[int, int] | None:
    """``(grid, extra_rows)`` with ``(2*grid - 1)**2 + extra == rows`` (BEiT: 3 extra rows)."""
    for extra in (3, 0):
        s = math.isqrt(max(rows - extra, 0))
        if s * s == rows - extra and s % 2 == 1:
            return (s + 1) // 2, extra
    return None


def _resolution(grid_ck: int, grid_tg: int, patch: int | None) -> str:
    if patch:
        return (f"the checkpoint was trained at {grid_ck * patch} px, {{name}} is built for "
                f"{grid_tg * patch} px (patch {patch})")
    return "the checkpoint was trained at another input resolution"


_RESAMPLE = ("build the model for the checkpoint's input size, or resample the embedding to "
             "your grid before loading (timm.layers.resample_abs_pos_embed); this changes "
             "the weights, so midaskit does not do it for you")


def explain_shape(key: str, ck: TensorMeta, tg: TensorMeta, ctx: ShapeContext,
                  *, derived: bool = False) -> ShapeExplanation:
    """Explain why ``key`` is ``ck.shape`` in the checkpoint and ``tg.shape`` in the target."""
    module, leaf = split_key(key)
    cs, ts = ck.shape, tg.shape
    name = ctx.target_name
    both = f"`{key}`: checkpoint {format_shape(cs)}, {name} {format_shape(ts)}"
    if derived:
        return ShapeExplanation(
            "derived", f"{both}: a computed buffer made for another input size or window",
            "recompute it for your model (safe: it is not learned)", Severity.FIX)
    if len(cs) != len(ts):
        return ShapeExplanation(
            "rank", f"{both}: a {len(cs)}-d tensor in the checkpoint, a {len(ts)}-d one in {name}",
            "the checkpoint was saved from other code; convert it with a table of renames "
            "and reshapes (RenameRegex / Reshape) once you know the layout")
    diff = [i for i in range(len(cs)) if cs[i] != ts[i]]
    if leaf in POS_EMBED_LEAVES and len(cs) == 3 and diff == [1]:
        grids = _pos_embed_grids(cs[1], ts[1])
        if grids:
            g_ck, g_tg, p = grids
            extra = f" + {p} class token{'s' if p > 1 else ''}" if p else ""
            why = _resolution(g_ck, g_tg, ctx.patch).format(name=name)
            return ShapeExplanation(
                "pos-embed", f"{both}: a {g_ck}x{g_ck} position grid{extra} in the checkpoint, "
                f"{g_tg}x{g_tg} in {name}: {why}", _RESAMPLE)
    if leaf == "relative_position_bias_table" and len(cs) == 2 and diff == [0]:
        g_ck, g_tg = _rel_table_grid(cs[0]), _rel_table_grid(ts[0])
        if g_ck and g_tg and g_ck[1] == g_tg[1]:
            what = "grid" if g_ck[1] else "window"
            why = (_resolution(g_ck[0], g_tg[0], ctx.patch).format(name=name) if g_ck[1]
                   else "the checkpoint uses another window size")
            return ShapeExplanation(
                "rel-pos-table", f"{both}: relative positions of a {g_ck[0]}x{g_ck[0]} {what} in "
                f"the checkpoint, {g_tg[0]}x{g_tg[0]} in {name}: {why}",
                "build the model for the checkpoint's input size (or window), or resample the "
                "table (timm.layers.resample_relative_position_bias_table)")
    is_head = module == ctx.last_module
    if leaf == "weight" and len(cs) >= 3 and diff == [1]:
        if key == ctx.first_conv:
            mode = "drop-extra" if ts[1] < cs[1] else "mean"
            return ShapeExplanation(
                "input-channels", f"{both}: the checkpoint's model took {cs[1]} input channels, "
                f"yours takes {ts[1]}",
                f"adapt the first conv (--allow adapt-input-channels, mode {mode}: "
                + ("keep the first channels" if mode == "drop-extra" else
                   "repeat the weights, scaled to keep activations")
                + "), or build the model for the checkpoint's input",
                Severity.DECISION, (AdaptInputChannels(key, ts[1], mode, reason=(
                    f"the checkpoint's first conv takes {cs[1]} channels, {name} {ts[1]}")),))
    if is_head and diff == [0] and len(cs) >= 2:
        classes = len(cs) == 2 or any(w in module.split(".")[-1].lower() for w in HEAD_WORDS)
        noun = "classes" if classes else "output channels"
        return ShapeExplanation(
            "classes" if classes else "outputs",
            f"{both}: the checkpoint's head predicts {cs[0]} {noun}, yours {ts[0]}",
            "build the model with the checkpoint's number of outputs, or leave the head out of "
            "the file and train a new one (the rest of the network fits)")
    if leaf == "weight" and len(cs) >= 3 and diff and all(i >= 2 for i in diff):
        kc, kt = "x".join(map(str, cs[2:])), "x".join(map(str, ts[2:]))
        return ShapeExplanation(
            "kernel-size", f"{both}: a {kc} kernel in the checkpoint, {kt} in {name}",
            "build the model with the checkpoint's kernel sizes")
    return ShapeExplanation(
        "width", f"{both}: another layer width", "use the model size the checkpoint was trained "
        "with (compare the widths: the first dimension is the layer's output width)")
