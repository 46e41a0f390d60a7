"""The embedded default data, generated and converted on first use into a cache folder.

    root = ensure_embedded_data(".cache/unip2", seed=0)   # → .cache/unip2/shapes-v2-seed0/parquet (manifest.json)

Both steps write to a temporary folder and rename at the end, so an interrupted first run is simply
redone; a finished cache is reused as is. A cache made before the generator wrote its Flickr30k-style
split is completed: the generator's output for the other datasets does not depend on that split, so
regenerating changes none of their files.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from unip2.data.manifest import MANIFEST_FILE
from unip2.data.prepare import prepare
from unip2.data.synthetic import GENERATOR_VERSION, SyntheticConfig, generate

FLICKR_JSON, FLICKR_IMAGES = Path("flickr30k") / "dataset_flickr30k.json", Path("flickr30k") / "flickr30k-images"


def ensure_embedded_data(cache_dir: str | Path, *, seed: int = 0) -> Path:
    """Generate (if absent) and convert (if absent) the shapes world; returns the Parquet folder."""
    base = Path(cache_dir).expanduser().resolve() / f"shapes-v{GENERATOR_VERSION}-seed{seed}"
    raw, parquet = base / "raw", base / "parquet"
    manifest = parquet / MANIFEST_FILE
    if manifest.is_file() and "flickr30k" in json.loads(manifest.read_text())["datasets"]:
        return parquet
    if not (raw / "coco" / "dataset_coco.json").is_file() or not (raw / FLICKR_JSON).is_file():
        print(f"[data] generating the embedded shapes world into {raw}", file=sys.stderr)
        generate(raw, SyntheticConfig(seed=seed), overwrite=True)
    print(f"[data] converting it to Parquet into {parquet}", file=sys.stderr)
    prepare(out=parquet, coco=raw / "coco", imagenet=raw / "imagenet", karpathy=raw / "coco" / "dataset_coco.json",
            flickr30k=(raw / FLICKR_JSON, raw / FLICKR_IMAGES), overwrite=True)
    return parquet
