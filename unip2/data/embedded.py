"""The embedded default data, generated and converted on first use into a cache folder.

    root = ensure_embedded_data(".cache/unip2", seed=0)   # → folder holding manifest.json

Both steps write to a temporary folder and rename at the end, so an interrupted first run is simply
redone; a finished cache is reused as is.
"""

from __future__ import annotations

import sys
from pathlib import Path

from unip2.data.manifest import MANIFEST_FILE
from unip2.data.prepare import prepare
from unip2.data.synthetic import SyntheticConfig, generate


def ensure_embedded_data(cache_dir: str | Path, *, seed: int = 0) -> Path:
    """Generate (if absent) and convert (if absent) the shapes world; returns the Parquet folder."""
    base = Path(cache_dir).expanduser().resolve() / f"shapes-seed{seed}"
    raw, parquet = base / "raw", base / "parquet"
    if (parquet / MANIFEST_FILE).is_file():
        return parquet
    if not (raw / "coco" / "dataset_coco.json").is_file():
        print(f"[data] generating the embedded shapes world into {raw}", file=sys.stderr)
        generate(raw, SyntheticConfig(seed=seed), overwrite=True)
    print(f"[data] converting it to Parquet into {parquet}", file=sys.stderr)
    prepare(out=parquet, coco=raw / "coco", imagenet=raw / "imagenet", karpathy=raw / "coco" / "dataset_coco.json",
            overwrite=True)
    return parquet
