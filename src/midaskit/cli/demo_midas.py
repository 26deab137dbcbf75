"""The MiDaS part of ``midaskit demo``: an official-layout file (synthetic weights, and it says
so) is identified from its contents, loaded and run on the image shipped with the package."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from ..errors import EXIT_OK
from ._common import emit

__all__ = ["DEMO_VARIANT", "run_midas_demo"]

DEMO_VARIANT = "midas_v21_small_256"


def run_midas_demo(folder: Path, *, overwrite: bool = False) -> bool:
    """Write, identify, load and predict; returns whether every step behaved as expected."""
    import torch

    from ..loading import load
    from ..synthetic import synthetic_state_dict
    from .main import main

    emit("\n=== MiDaS: from a file alone to depth maps ===")
    weights = folder / "model.pt"
    torch.save(synthetic_state_dict(DEMO_VARIANT, seed=0), weights)
    emit(f"wrote {weights.name}: the official {DEMO_VARIANT} layout with SYNTHETIC weights "
         "(seeded random values, not the trained MiDaS weights, which this demo cannot ship); "
         "the depth map shows the pipeline working, not real depth")

    emit(f"$ midaskit identify {weights}")
    if main(["identify", str(weights)]) != EXIT_OK:
        return False

    loaded = load(weights)
    emit(f"-> midaskit.load: {loaded.spec.name} built on meta and loaded strictly "
         f"({sum(p.numel() for p in loaded.model.parameters()) / 1e6:.1f}M parameters), "
         f"{len(loaded.steps)} fixes needed")

    image = Path(str(resources.files("midaskit").joinpath("data/demo.png")))
    out = folder / "depth"
    argv = ["predict", str(image), "-o", str(out), "--weights", str(weights), "--quiet"]
    if overwrite:
        argv.append("--overwrite")
    emit("$ midaskit " + " ".join(argv))
    if main(argv) != EXIT_OK:
        return False
    for path in sorted(out.iterdir()):
        emit(f"-> {path} ({path.stat().st_size} bytes)")
    return True
