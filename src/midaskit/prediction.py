"""Batched depth prediction for image files: official preprocessing, forward, resize back to the
input size (bicubic, ``align_corners=False``, as the official ``run.py``), outputs written
atomically. A corrupt image is skipped with a warning and counted; nothing existing is replaced
without ``overwrite``.
"""

from __future__ import annotations

import glob
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ImageReadError, MidaskitError
from .outputs import ENCODERS, FORMATS, atomic_write_bytes, check_writable
from .preprocess import read_image

__all__ = ["IMAGE_SUFFIXES", "PredictSummary", "collect_inputs", "predict", "predict_arrays"]

IMAGE_SUFFIXES = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".pgm", ".ppm", ".pnm", ".jp2"}
)
DTYPES = ("fp32", "bf16", "fp16")


@dataclass
class PredictSummary:
    """What a prediction run did.

    Attributes:
        written: output files written.
        predicted: inputs predicted.
        skipped: ``(input, reason)`` for every input that could not be used.
        variant: the variant that ran.
        load_steps: the fixes applied while loading the weights.
    """

    written: list[Path] = field(default_factory=list)
    predicted: int = 0
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    variant: str | None = None
    load_steps: list[Any] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.skipped


def collect_inputs(inputs: Iterable[str | Path]) -> list[tuple[Path, Path]]:
    """Expand files, folders (recursively) and globs to ``(image path, output stem)`` pairs.

    The stem mirrors the input: a folder's images keep their sub-folders; two inputs that
    would share an output name keep their file extensions in it.

    Raises:
        ImageReadError: an input that does not exist and matches nothing.
    """
    found: list[tuple[Path, Path]] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            images = sorted(p for p in path.rglob("*")
                            if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            found += [(p, p.relative_to(path).with_suffix("")) for p in images]
        elif path.exists():
            found.append((path, Path(path.stem)))
        else:
            matches = sorted(Path(m) for m in glob.glob(str(item), recursive=True))
            if not matches:
                raise ImageReadError(f"{item}: no such file, folder or matching glob")
            found += [(m, Path(m.stem)) for m in matches if m.is_file()]
    stems: dict[Path, int] = {}
    for _, stem in found:
        stems[stem] = stems.get(stem, 0) + 1
    return [
        (p, stem.with_name(f"{stem.name}_{p.suffix.lstrip('.')}") if stems[stem] > 1 else stem)
        for p, stem in found
    ]


def predict_arrays(loaded: Any, images: Sequence[np.ndarray], *, dtype: str = "fp32") -> list[
    np.ndarray
]:
    """Depth ``(H, W)`` float32 for each RGB ``(H, W, 3)`` image in [0, 1], at the image's size.

    Images whose network sizes agree run as one batch.
    """
    import torch
    import torch.nn.functional as F

    if dtype not in DTYPES:
        raise MidaskitError(f"dtype must be one of {', '.join(DTYPES)}, not {dtype!r}")
    model, transform = loaded.model, loaded.transform
    param = next(model.parameters())
    inputs = [transform(img) for img in images]
    outputs: list[np.ndarray | None] = [None] * len(images)
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, x in enumerate(inputs):
        groups.setdefault(x.shape, []).append(i)
    autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(dtype)
    for indices in groups.values():
        batch = torch.from_numpy(np.stack([inputs[i] for i in indices])).to(param.device)
        with torch.inference_mode(), torch.autocast(
            param.device.type, dtype=autocast_dtype or torch.float32,
            enabled=autocast_dtype is not None,
        ):
            depth = model(batch.to(param.dtype))
        for j, i in enumerate(indices):
            h, w = images[i].shape[:2]
            resized = F.interpolate(depth[j : j + 1, None].float(), size=(h, w), mode="bicubic",
                                    align_corners=False)
            outputs[i] = resized[0, 0].cpu().numpy()
    return [o for o in outputs if o is not None]


def _warn(message: str) -> None:
    print(f"midaskit: warning: {message}", file=sys.stderr)


def predict(
    inputs: Iterable[str | Path],
    out_dir: str | Path,
    *,
    weights: str | Path | None = None,
    loaded: Any = None,
    variant: str | None = None,
    formats: Sequence[str] = ("pfm", "png16", "color"),
    batch: int = 1,
    device: str = "cpu",
    dtype: str = "fp32",
    overwrite: bool = False,
    progress: bool | None = None,
) -> PredictSummary:
    """Predict depth for image files and write the requested formats under ``out_dir``.

    Args:
        inputs: image files, folders (searched recursively) and glob patterns.
        out_dir: output folder (created); output names mirror the inputs.
        weights: checkpoint file, unless an already ``loaded`` model is given.
        formats: any of ``pfm``, ``png16``, ``color``.
        batch: images per forward (images of equal network size are batched).
        overwrite: replace existing outputs; without it any existing output stops the run
            before the model runs.
        progress: show a progress bar on stderr (default: when more than one image).

    Returns:
        the summary; ``summary.skipped`` lists unreadable inputs, which never stop the run.
    """
    from .loading import load

    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise MidaskitError(
            f"unknown output format(s) {', '.join(unknown) or '(none)'}; "
            f"choose from {', '.join(FORMATS)}"
        )
    if batch < 1:
        raise MidaskitError("batch must be at least 1")
    pairs = collect_inputs(inputs)
    if not pairs:
        raise ImageReadError("no input images found")
    out_dir = Path(out_dir)
    input_set = frozenset(p.resolve() for p, _ in pairs)
    targets = [(p, [(f, out_dir / f"{stem}{FORMATS[f]}") for f in formats]) for p, stem in pairs]
    for _, outs in targets:
        for _, out in outs:
            check_writable(out, overwrite=overwrite, inputs=input_set)
    if loaded is None:
        if weights is None:
            raise MidaskitError("give the weights file (--weights FILE)")
        loaded = load(weights, variant, device=device)

    summary = PredictSummary(variant=loaded.spec.name, load_steps=list(loaded.steps))
    show = progress if progress is not None else len(targets) > 1
    from tqdm import tqdm

    bar = tqdm(total=len(targets), unit="img", disable=not show, file=sys.stderr)
    try:
        for start in range(0, len(targets), batch):
            chunk = targets[start : start + batch]
            images, kept = [], []
            for path, outs in chunk:
                try:
                    images.append(read_image(path))
                    kept.append(outs)
                except ImageReadError as exc:
                    summary.skipped.append((path, str(exc)))
                    _warn(f"skipped {exc}")
                    bar.update(1)
            if not images:
                continue
            for depth, outs in zip(predict_arrays(loaded, images, dtype=dtype), kept, strict=True):
                for fmt, out in outs:
                    atomic_write_bytes(out, ENCODERS[fmt](depth))
                    summary.written.append(out)
                summary.predicted += 1
                bar.update(1)
    finally:
        bar.close()
    return summary
