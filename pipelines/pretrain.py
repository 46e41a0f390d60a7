"""Stage 1 alone: the encoders pretrained before the generalist, on Ray (``pipelines.stage1.encoders``; cached, so
``pipelines/train.py`` finds the result), optionally copied out in the layout the ``pretrained_path`` fields take.

    python pipelines/pretrain.py                                    # the default run's stage 1 (cached)
    python pipelines/pretrain.py --config pipelines/configs/long.yaml pretrain.image_steps=800
    python pipelines/pretrain.py --export weights/                  # also copy the encoders out
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

from pipelines.run import ray_runtime  # (first: sets Ray's environment before ray is imported)
from pipelines.run.cluster_fit import ClusterTooSmall
from pipelines.run.prepare import prepare_run
from pipelines.stage1.encoders import IMAGE_WEIGHTS, encoders_to_pretrain, ensure_pretrained_encoders


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="run config YAML (its model, data and pretrain sections are used)")
    parser.add_argument("--out", help="run folder of stage 1 (default: runs/pretrain-<timestamp>)")
    parser.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else a local Ray)")
    parser.add_argument("--export", help="also copy the pretrained encoders into this folder")
    parser.add_argument("overrides", nargs="*", help="key=value config overrides, e.g. pretrain.image_steps=800")
    args = parser.parse_args(argv)
    out = args.out or str(Path("runs") / time.strftime("pretrain-%Y%m%d-%H%M%S"))
    try:
        try:
            run, out_dir, data_root = prepare_run(args.config, args.overrides, out=out, address=args.address,
                                                  keep_logs=True)
        except (ValueError, KeyError, FileNotFoundError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        if not encoders_to_pretrain(run):
            print("[pretrain] nothing to pretrain: every encoder in pretrain.encoders has a pretrained_path",
                  flush=True)
            return 0
        run = ensure_pretrained_encoders(run, data_root, out_dir)
        paths = {"image": run.model.backbone.pretrained_path, "text": run.model.text.pretrained_path}
        for encoder, path in paths.items():
            if path is None:
                continue
            if args.export:
                source = Path(path).parent if encoder == "image" else Path(path)
                destination = Path(args.export) / encoder
                shutil.copytree(source, destination, dirs_exist_ok=True)
                path = str(destination / IMAGE_WEIGHTS.name) if encoder == "image" else str(destination)
            field = "model.backbone.pretrained_path" if encoder == "image" else "model.text.pretrained_path"
            print(f"[pretrain] {field}={path}", flush=True)
        return 0
    except ClusterTooSmall as err:  # names the resources asked and present
        print(f"error: {err}", file=sys.stderr)
        return 2
    finally:
        ray_runtime.disconnect()


if __name__ == "__main__":
    sys.exit(main())
