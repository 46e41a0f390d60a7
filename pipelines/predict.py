"""Predict one task over a folder of images with Ray Data: batched, one loaded model per actor, on every worker of
the cluster (a local Ray when RAY_ADDRESS is not set).

    python pipelines/predict.py --checkpoint runs/<run>/checkpoint --task detection --images photos/ --out preds
    python pipelines/predict.py --checkpoint ckpt --task classification --images 'photos/*.jpg' --out preds top_k=3
    python pipelines/predict.py --checkpoint ckpt --task retrieval --images photos/ --out preds \\
        'texts=[a red circle, two blue squares]'

Each image's answer is exactly its Serve route's (``model.predict``, the task's first route taking one image);
``key=value`` arguments are the route's request fields. Written into ``--out``: ``predictions.jsonl`` (one line per
image: ``{"file", **answer}``), the task's files in its field's formats (``Task.prediction_files``: COCO results
JSON for detection and segmentation, a captions JSON, top-k labels, rankings), ``predictions.png`` (the first
images with what was predicted drawn on them) and ``summary.json`` (images read, predicted, skipped by reason:
a file that is not a decodable image is skipped and counted, never fatal).
"""

from __future__ import annotations

import argparse
import glob
import json
import sys
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `pipelines` importable when run as a script

from pipelines.run import ray_runtime  # noqa: E402  (sets Ray's environment before ray is imported)
from pipelines.evaluation.prediction_grid import draw_prediction_grid, grid_panels  # noqa: E402
from pipelines.training.checkpoints import model_folder  # noqa: E402
from unip2.precision import PRECISIONS  # noqa: E402

FOLDER = "images"
"""The dataset name the picture grid knows the files by."""


def image_files(images: str) -> list[str]:
    """A folder (every file in it and below, sorted) or a glob pattern → the files; none is an error."""
    path = Path(images)
    files = sorted(str(p) for p in path.rglob("*") if p.is_file()) if path.is_dir() else sorted(
        p for p in glob.glob(images, recursive=True) if Path(p).is_file())
    if not files:
        raise FileNotFoundError(f"--images {images}: no files there")
    return files


def parse_options(pairs: list[str]) -> dict:
    """``key=value`` → {key: YAML value} (``top_k=3``, ``texts=[a, b]``)."""
    options = {}
    for pair in pairs:
        if "=" not in pair:
            raise ValueError(f"{pair!r}: options are key=value (the route's request fields)")
        key, value = pair.split("=", 1)
        options[key] = yaml.safe_load(value)
    return options


class FolderPredictor:
    """The ``map_batches`` callable: one loaded model per actor; a batch of ``{"path", "bytes"}`` rows → one row per
    image with its answer (JSON) or why it was skipped."""

    def __init__(self, checkpoint: str, task: str, options: dict, precision: str):
        import torch

        import unip2

        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model = unip2.load(checkpoint, device=self.device).eval()
        self.task, self.options, self.precision = task, options, precision

    def __call__(self, batch: dict) -> dict:
        from unip2.tasks.preprocessing import UndecodableImage

        paths, data = list(batch["path"]), [bytes(item) for item in batch["bytes"]]
        # The rule training and evaluation skip by (Task.preprocess_decodable): the whole batch first, image by
        # image only when one of them does not decode.
        try:
            answers, reasons = self._predict(data), [None] * len(data)
        except UndecodableImage:
            answers, reasons = [], []
            for item in data:
                try:
                    answers += self._predict([item])
                    reasons.append(None)
                except UndecodableImage:
                    answers.append(None)
                    reasons.append(_skip_reason(item))
        return {"path": paths, "answer": [json.dumps(a) if a is not None else None for a in answers],
                "skipped": reasons}

    def _predict(self, images: list[bytes]) -> list[dict]:
        return self.model.predict(images, task=self.task, precision=self.precision, **self.options)


def _skip_reason(data: bytes) -> str:
    """The key a skipped file is counted under (empty, truncated or undecodable)."""
    from unip2.data.images import check_image

    return check_image(data).reason or "undecodable"


def predict_folder(checkpoint: str | Path, task: str, files: list[str], *, options: dict, batch_size: int = 16,
                   concurrency: int = 1, num_cpus: float = 1.0, precision: str = "auto") -> list[dict]:
    """Every file's row {"path", "answer" (dict) | None, "skipped" (reason) | None}, in the files' order, from a
    Ray Data pipeline on the connected cluster."""
    import ray

    gpus = ray_runtime.cluster_has_gpus()
    rows = (ray.data.read_binary_files(files, include_paths=True)
            .map_batches(FolderPredictor, fn_constructor_kwargs={"checkpoint": str(checkpoint), "task": task,
                                                                "options": options, "precision": precision},
                         batch_size=batch_size, concurrency=concurrency,
                         **({"num_gpus": 1} if gpus else {"num_cpus": num_cpus}))
            .take_all())
    order = {str(Path(f).resolve()): i for i, f in enumerate(files)}
    rows.sort(key=lambda row: order.get(str(Path(row["path"]).resolve()), len(order)))
    return [{"path": row["path"], "answer": json.loads(row["answer"]) if row["answer"] else None,
             "skipped": row["skipped"]} for row in rows]


def write_outputs(rows: list[dict], task_name: str, out: Path, *, started: float) -> dict:
    """predictions.jsonl, the task's files, predictions.png and summary.json → the summary."""
    from unip2.tasks import get_task

    task = get_task(task_name)
    out.mkdir(parents=True, exist_ok=True)
    predicted = [(row["path"], row["answer"]) for row in rows if row["answer"] is not None]
    with (out / "predictions.jsonl").open("w") as handle:
        for path, answer in predicted:
            handle.write(json.dumps({"file": path, **answer}) + "\n")
    files = {"predictions": str(out / "predictions.jsonl")}
    files |= {kind: str(path) for kind, path in task.prediction_files(
        [answer for _, answer in predicted], [path for path, _ in predicted], out).items()}
    by_id = {index: path for index, (path, _) in enumerate(predicted)}
    panels = grid_panels({task_name: [{"image_id": i, **answer} for i, (_, answer) in enumerate(predicted)]},
                         lambda dataset, ids: {i: Path(by_id[i]).read_bytes() for i in ids}, {task_name: FOLDER})
    if panels:
        files["picture"] = str(draw_prediction_grid(panels, out / "predictions.png"))
    skipped: dict[str, int] = {}
    for row in rows:
        if row["skipped"]:
            skipped[row["skipped"]] = skipped.get(row["skipped"], 0) + 1
    summary = {"task": task_name, "images": len(rows), "predicted": len(predicted), "skipped": skipped,
               "skipped_files": [row["path"] for row in rows if row["skipped"]], "files": files,
               "wall_time_s": round(time.time() - started, 1)}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="model folder (a run's checkpoint/) or a training "
                                                            "checkpoint")
    parser.add_argument("--task", required=True, help="a registered task with a route taking one image")
    parser.add_argument("--images", required=True, help="a folder (read recursively) or a glob pattern")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--batch-size", type=int, default=16, help="images per inference batch")
    parser.add_argument("--concurrency", type=int, default=1, help="predictor actors (one GPU each on a GPU cluster)")
    parser.add_argument("--num-cpus", type=float, default=1.0, help="CPUs per actor on a cluster without GPUs")
    parser.add_argument("--precision", default="auto", choices=PRECISIONS, help="as train.precision")
    parser.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else a local Ray)")
    parser.add_argument("options", nargs="*", help="key=value request fields of the task's route (e.g. top_k=3)")
    args = parser.parse_args(argv)
    started = time.time()
    out = Path(args.out)
    try:
        from unip2.inference import image_route, request_params
        from unip2.persistence import load_config
        from unip2.tasks import get_task

        task = get_task(args.task)
        if image_route(task).images != "one":
            raise ValueError(f"the {args.task} task's route {image_route(task).path} does not take one image")
        checkpoint = model_folder(args.checkpoint)
        load_config(checkpoint)  # refuses a missing or incomplete folder, naming it
        options = parse_options(args.options)
        request_params(image_route(task), options)  # unknown fields refused here, not in the actors
        files = image_files(args.images)
    except (ValueError, KeyError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    ray_runtime.connect(args.address, log_dir=out / "logs")
    try:
        print(f"[predict] {len(files)} files, task {args.task}, checkpoint {checkpoint}", flush=True)
        rows = predict_folder(checkpoint, args.task, files, options=options, batch_size=args.batch_size,
                              concurrency=args.concurrency, num_cpus=args.num_cpus, precision=args.precision)
        summary = write_outputs(rows, args.task, out, started=started)
    finally:
        ray_runtime.disconnect()
    print(f"[predict] {summary['predicted']} predicted, {sum(summary['skipped'].values())} skipped "
          f"({summary['skipped'] or 'none'}) in {summary['wall_time_s']} s → {out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
