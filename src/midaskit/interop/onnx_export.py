"""Export a MiDaS checkpoint to ONNX, checked with onnxruntime against PyTorch.

We use torch's TorchScript-based exporter (``torch.onnx.export(..., dynamo=False)``): in torch
2.13 it exports every variant in seconds and keeps height and width symbolic where the model
computes them from the input (every ViT, hybrid, BEiT, Next-ViT and v2.1 model: see
``models/symbolic.py``); the dynamo exporter needs ``onnxscript`` and took minutes even for the
smallest model. Variants that only run at their native square size (Swin, SwinV2, LeViT) get a
dynamic batch only. The graph maps ``image (B, 3, H, W)`` to ``depth (B, H, W)``.
"""

from __future__ import annotations

import io
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..checkpoint.write import atomic_write
from ..errors import IncompatibleCheckpointError, OutputExistsError, UnsupportedInputSizeError
from ..variants import VariantSpec
from .deps import require

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = ["ONNX_OPSET", "ONNX_TOLERANCE_OVER_STD", "ExportReport", "export_onnx",
           "export_model", "dynamic_axes_for", "check_onnx"]

ONNX_OPSET = 17
# onnxruntime's depth may differ from PyTorch's by this fraction of the depth's std
ONNX_TOLERANCE_OVER_STD = 1e-3


@dataclass
class ExportReport:
    """What :func:`export_onnx` wrote and how it was checked.

    Attributes:
        output: the ``.onnx`` file.
        variant: the exported variant.
        input_shape: the traced example input's shape ``(B, 3, H, W)``.
        dynamic: the input axes left symbolic (``batch``, ``height``, ``width``).
        errors: ``{"BxHxW": max|onnx - torch| / std(torch)}`` per checked input.
        notes: what the user should know (a dynamic size that had to be given up).
    """

    output: Path
    variant: str
    input_shape: tuple[int, ...]
    dynamic: tuple[str, ...]
    errors: dict[str, float]
    notes: list[str] = field(default_factory=list)


def dynamic_axes_for(spec: VariantSpec, dynamic: bool, *, size: bool = True
                     ) -> dict[str, dict[int, str]] | None:
    """The ``dynamic_axes`` of an export: batch, and height/width when ``size`` and the variant
    is not native-size only; None for a static export."""
    if not dynamic:
        return None
    image, depth = {0: "batch"}, {0: "batch"}
    if size and not spec.native_size_only:
        image |= {2: "height", 3: "width"}
        depth |= {1: "height", 2: "width"}
    return {"image": image, "depth": depth}


def export_model(model: Any, *, height: int, width: int,
                 axes: dict[str, dict[int, str]] | None) -> bytes:
    """Trace ``model`` on a ``(B, 3, height, width)`` input; returns the serialised ONNX graph.

    Args:
        axes: the ``dynamic_axes`` (see :func:`dynamic_axes_for`), None for static shapes.
    """
    import torch

    from ..models.fastpath import plain_eager

    # a dynamic graph is traced at batch 2: a branch taken only when the batch is > 1 (Swin's
    # mask tiling over the batch) is then part of the graph, and stays right at batch 1
    batch = 2 if axes else 1
    x = torch.randn(batch, 3, height, width, generator=torch.Generator().manual_seed(0))
    # the plain formulation: the fast path's oneDNN calls have no ONNX equivalent
    with warnings.catch_warnings(), plain_eager(), torch.no_grad():
        # TracerWarnings (python ints from shapes) and the exporter's deprecation notice
        warnings.simplefilter("ignore")
        buffer = io.BytesIO()
        torch.onnx.export(
            model, (x,), buffer, dynamo=False, opset_version=ONNX_OPSET,
            input_names=["image"], output_names=["depth"],
            dynamic_axes=axes, do_constant_folding=True,
        )
    return buffer.getvalue()


def check_onnx(graph: bytes, model: Any, inputs: list[torch.Tensor]) -> dict[str, float]:
    """``max|onnx - torch| / std(torch)`` for each input, keyed ``"BxHxW"`` (``inf`` when the
    graph cannot run at that size or gives another shape)."""
    import numpy as np
    import torch

    ort = require("onnxruntime", "onnx")
    options = ort.SessionOptions()
    options.log_severity_level = 4  # a size the graph cannot run at is reported as inf, not logged
    session = ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])
    errors = {}
    for x in inputs:
        with torch.inference_mode():
            expected = model(x).float().numpy()
        name = "x".join(map(str, (x.shape[0], *x.shape[2:])))
        try:
            got = session.run(["depth"], {"image": x.numpy()})[0]
        except Exception:  # onnxruntime's own errors: a graph that cannot run at this size
            got = None
        if got is None or got.shape != expected.shape:
            errors[name] = float("inf")  # shapes fixed at trace time
            continue
        errors[name] = float(np.abs(got - expected).max() / expected.std())
    return errors


def _check_inputs(height: int, width: int, axes: dict[str, dict[int, str]] | None) -> list[Any]:
    """The traced size, and for a dynamic graph a batch of 2 at another size where allowed."""
    import torch

    gen = torch.Generator().manual_seed(1)
    inputs = [torch.randn(1, 3, height, width, generator=gen)]
    if axes:  # the symbolic axes must give the right answer away from the traced shape
        h, w = (height + 64, width + 32) if len(axes["image"]) > 1 else (height, width)
        inputs.append(torch.randn(2, 3, h, w, generator=gen))
    return inputs


def export_onnx(
    src: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    variant: str | None = None,
    height: int | None = None,
    width: int | None = None,
    dynamic: bool = False,
    overwrite: bool = False,
    check: bool = True,
) -> ExportReport:
    """Export the model of checkpoint ``src`` to ``out`` (written atomically).

    Args:
        src: any checkpoint midaskit loads.
        variant: force this variant instead of identifying the file.
        height, width: the example input size (default: the variant's native size).
        dynamic: symbolic batch, and height/width where the architecture allows.
        overwrite: replace an existing ``out``.
        check: run the graph in onnxruntime and compare with PyTorch (raises beyond
            :data:`ONNX_TOLERANCE_OVER_STD`); for a dynamic export also at another size, falling
            back to a dynamic batch only when the traced graph fixed its height and width.
            Without the check a dynamic graph is not verified.

    Raises:
        UnsupportedInputSizeError: a size the variant cannot run at.
        OutputExistsError: ``out`` exists and ``overwrite`` is False.
        MissingExtraError: onnx or onnxruntime is not installed.
    """
    from ..loading import load

    require("onnx", "onnx")
    if check:
        require("onnxruntime", "onnx")
    out = Path(out)
    if out.exists() and not overwrite:
        raise OutputExistsError(f"{out} exists; pass --overwrite to replace it")
    if out.is_dir():
        raise OutputExistsError(f"{out} is a directory; give a .onnx file name")
    loaded = load(src, variant)
    spec, model = loaded.spec, loaded.model
    net_h, net_w = spec.net_size
    height, width = height or net_h, width or net_w
    if spec.native_size_only and (height, width) != (net_h, net_w):
        raise UnsupportedInputSizeError(
            f"{spec.name} runs only at {net_h}x{net_w} (as the official model); "
            f"got {height}x{width}")
    if height % 32 or width % 32:
        raise UnsupportedInputSizeError(
            f"height and width must be multiples of 32 (as the official transform makes them); "
            f"got {height}x{width}")

    axes = dynamic_axes_for(spec, dynamic)
    notes: list[str] = []
    graph = export_model(model, height=height, width=width, axes=axes)
    errors: dict[str, float] = {}
    if check:
        errors = check_onnx(graph, model, _check_inputs(height, width, axes))
        traced_ok = _within(dict(list(errors.items())[:1]))
        if axes and len(axes["image"]) > 1 and traced_ok and not _within(errors):
            # the traced graph fixed its height/width (a Python int taken from a shape): keep
            # what is right, a dynamic batch only
            notes.append(f"{spec.name}: the traced graph is right only at {height}x{width} "
                         "(sizes fixed while tracing); exported with a dynamic batch only")
            axes = dynamic_axes_for(spec, dynamic, size=False)
            graph = export_model(model, height=height, width=width, axes=axes)
            errors = check_onnx(graph, model, _check_inputs(height, width, axes))
        if not _within(errors):
            raise IncompatibleCheckpointError(
                f"{spec.name}: onnxruntime differs from PyTorch by {max(errors.values()):.2e} "
                f"of the depth's std (tolerance {ONNX_TOLERANCE_OVER_STD:.0e}): {errors}")
    atomic_write(out, lambda fh: fh.write(graph))
    return ExportReport(out, spec.name, (2 if axes else 1, 3, height, width),
                        tuple((axes or {}).get("image", {}).values()), errors, notes)


def _within(errors: dict[str, float]) -> bool:
    return all(e < ONNX_TOLERANCE_OVER_STD for e in errors.values())
