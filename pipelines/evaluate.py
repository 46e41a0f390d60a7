"""Evaluate a checkpoint on the validation (or test) split of converted data, with Ray Data.

    python pipelines/evaluate.py --checkpoint runs/<run>/checkpoint --out runs/<run>/eval
    python pipelines/evaluate.py --checkpoint runs/<run>/ray/<run>/checkpoint_0000600 --split test --out eval-test
    python pipelines/evaluate.py --checkpoint runs/<run>/checkpoint --data data/shapes-parquet --out runs/<run>/eval
    python pipelines/evaluate.py --checkpoint runs/<run>/checkpoint --data data/shapes-parquet --tasks detection,captioning \\
        --max-images 64 --fast --out /tmp/eval
    python pipelines/evaluate.py --checkpoint ckpt --data /data/unip2-parquet --split test \\
        --tasks captioning,retrieval --concurrency 4 --batch-size 32 --out eval-test
    python pipelines/evaluate.py --checkpoint ckpt --data data/shapes-parquet --class-names names.json --out eval-open
    RAY_ADDRESS=auto python pipelines/evaluate.py --checkpoint ckpt --data /data/unip2-parquet --out eval

``--checkpoint``: a model folder (``unip2.save``; a run's ``checkpoint/``) or a training checkpoint (Ray
Train's ``checkpoint_*`` folders, holding it in ``model/``). Without ``--data``, the data the checkpoint was
trained on (``data.root`` of the ``run_config.yaml`` beside the model or in the folder above it).
Each task is preprocessed with the input settings the checkpoint records (image size, text length).
Retrieval is also evaluated zero-shot on the Flickr30k test split when the data has one
(``retrieval_flickr30k`` in metrics.json, the F30k columns of report.md).

Joins the Ray cluster at RAY_ADDRESS when set, else starts a local one. Writes metrics.json, report.md,
predictions.png, detections.json, segmentations.json and captions.json into --out (see
pipelines/evaluation/pipeline.py) and prints metrics.json; Ray's own messages go to --out's ``logs/`` (see
pipelines/run/ray_runtime.py), off the console. ``--class-names FILE``: a ``.json`` file
{"imagenet": [...], "coco": [...]} replaces the candidate names of those label spaces; any other file
holds one name per line and replaces the candidates of every evaluated task that has class names.
Exit status 2: bad input (missing or incomplete checkpoint or data, no --data and no recorded training
data or a recorded data folder that no longer exists, unknown task, class names that differ between
checkpoint and data).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `pipelines` importable when run as a script

from pipelines.run import ray_runtime  # noqa: E402  (sets Ray's environment before ray is imported)
from pipelines.evaluation.pipeline import evaluate, plan_evaluation, read_class_names  # noqa: E402
from pipelines.training.checkpoints import training_data_root  # noqa: E402
from unip2.precision import PRECISIONS  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True,
                        help="model folder written by unip2.save (a run's checkpoint/), or a training checkpoint")
    parser.add_argument("--data", default=None, help="converted data folder (holding manifest.json); default: "
                        "the one the checkpoint was trained on")
    parser.add_argument("--split", default="val", help="split to evaluate (val; test for Karpathy captions)")
    parser.add_argument("--tasks", default=None, help="comma-separated task names (default: all with data)")
    parser.add_argument("--out", default="eval", help="output folder")
    parser.add_argument("--class-names", default=None, help="candidate names file (.json per label space, or "
                        "one name per line for every label space)")
    parser.add_argument("--concurrency", type=int, default=1, help="predictor actors (one GPU each on a GPU cluster)")
    parser.add_argument("--batch-size", type=int, default=16, help="rows per inference batch")
    parser.add_argument("--max-images", type=int, default=None, help="only the first N rows of each split")
    parser.add_argument("--num-cpus", type=float, default=0.5, help="CPUs per actor on a cluster without GPUs")
    parser.add_argument("--fast", action="store_true", help="skip METEOR (a ~10 s Java process)")
    parser.add_argument("--precision", default="auto", choices=PRECISIONS,
                        help="bf16 autocast or fp32, as train.precision (auto: bf16 where the hardware has it)")
    args = parser.parse_args(argv)
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()] if args.tasks else None
    try:
        data = args.data if args.data is not None else training_data_root(args.checkpoint)
        class_names = read_class_names(args.class_names) if args.class_names else None
        plan_evaluation(args.checkpoint, data, split=args.split, tasks=tasks, class_names=class_names)
    except (FileNotFoundError, KeyError, ValueError) as error:  # bad input: say why, before starting Ray
        print(f"error: {error.args[0] if isinstance(error, KeyError) else error}", file=sys.stderr)
        return 2

    ray_runtime.connect(log_dir=Path(args.out) / "logs")  # RAY_ADDRESS if set, else a local Ray
    try:
        metrics = evaluate(args.checkpoint, data, split=args.split, tasks=tasks, out_dir=args.out,
                           class_names=class_names, concurrency=args.concurrency, batch_size=args.batch_size,
                           max_images=args.max_images, num_cpus=args.num_cpus, meteor=not args.fast,
                           precision=args.precision)
    finally:
        ray_runtime.disconnect()
    print(json.dumps(metrics, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
