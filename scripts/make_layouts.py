#!/usr/bin/env python3
"""Regenerate ``src/midaskit/data/layouts.json.gz`` from the reference manifests.

The packaged layouts are the official checkpoint layouts (key, shape, dtype, buffer?, derived?)
of the 13 variants: identification and the doctor use them without building a model or
importing torch. ``tests/test_layouts.py`` checks they equal the manifests.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MANIFESTS = ROOT / "tests" / "data" / "reference" / "manifests"
OUT = ROOT / "src" / "midaskit" / "data" / "layouts.json.gz"


def main() -> None:
    layouts = {}
    for path in sorted(MANIFESTS.glob("*.json")):
        manifest = json.loads(path.read_text())
        layouts[manifest["variant"]] = [
            [e["key"], e["shape"], e["dtype"], int(e["kind"] == "buffer"), int(e["derived"])]
            for e in manifest["entries"]
        ]
    payload = json.dumps(layouts, separators=(",", ":"), sort_keys=True).encode()
    OUT.write_bytes(gzip.compress(payload, mtime=0))
    print(f"{len(layouts)} layouts -> {OUT} ({OUT.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
