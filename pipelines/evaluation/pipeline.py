"""Batch evaluation of a checkpoint on a converted data folder, with Ray Data.

    import ray
    from pipelines.evaluation.pipeline import evaluate
    ray.init(...)                        # the caller starts or joins Ray; evaluate() never does
    metrics = evaluate("ckpt/", "data/parquet", split="val", out_dir="eval/")

Phases:
1. ``plan_evaluation`` (no Ray): the checkpoint is complete (a ``unip2.save`` folder, or a training
   checkpoint holding one in ``model/``), the data folder has a manifest, the task names are registered;
   tasks whose dataset, split or annotations are absent are skipped with a note; the checkpoint's class
   names must equal the data's unless candidate names are given. A task's zero-shot splits
   (``Task.zero_shot_splits``, e.g. retrieval on the Flickr30k test split) are added when the data has
   them, each its own entry of metrics.json (``<task>_<dataset>``, e.g. ``retrieval_flickr30k``).
2. One Ray Data pipeline: each dataset's split (``read_parquet``, first ``max_images`` rows) in one
   stream → ``map_batches(BatchPredictor)``, an actor pool of ``concurrency`` actors that each load the
   checkpoint once (one GPU each when the cluster has GPUs, else ``num_cpus``) and predict every task
   reading the row's dataset, each with the input settings the checkpoint records for it
   (``ModelConfig.task_input_settings``); the driver gathers the rows. ``in_process=True`` (sweep trials
   on CPU clusters) predicts the same rows in the caller's process instead (``predict_in_process``).
3. Metrics on the driver (each task's ``evaluate`` → ``unip2.eval``), then the files in ``out_dir``:
   ``metrics.json``, ``detections.json`` / ``segmentations.json`` (COCO results), ``captions.json``,
   ``report.md`` (paper Table 6 layout) and ``predictions.png`` (a grid of predictions).
"""

from __future__ import annotations

import json
import logging
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipelines.evaluation.batch_predictor import BatchPredictor, annotation_columns, decode_predictions, to_row_schema
from pipelines.evaluation.report import write_report
from pipelines.evaluation.prediction_grid import draw_prediction_grid, grid_panels
from pipelines.run.ray_runtime import cluster_has_gpus
from pipelines.training.checkpoints import model_folder
from unip2.config import ModelConfig
from unip2.data.manifest import load_manifest, split_files
from unip2.persistence import WEIGHTS, load_config
from unip2.tasks import TASKS, get_task
from unip2.tasks.outputs import MetricContext, TaskOutput

logger = logging.getLogger("pipelines.evaluation.pipeline")


class ClassNamesMismatch(ValueError):
    """The checkpoint's candidate names for a label space are not the data's classes."""


@dataclass(frozen=True)
class Evaluation:
    """One entry of metrics.json: a task on one dataset's split."""

    key: str
    """Its metrics.json key: the task name on the task's own dataset, ``<task>_<dataset>`` zero-shot."""
    task: str
    dataset: str
    split: str


@dataclass
class EvaluationPlan:
    """What ``evaluate`` will run, decided before any Ray work."""

    checkpoint_dir: Path | None
    """The ``unip2.save`` folder (a training checkpoint's ``model/`` when given a training checkpoint); None for a
    model evaluated in memory."""
    data_root: Path
    split: str
    config: ModelConfig
    manifest: dict
    tasks: list[str]
    """Tasks to evaluate on their own dataset's ``split``, in registry order."""
    skipped_tasks: dict[str, str] = field(default_factory=dict)
    """Requested tasks left out, with the reason."""
    candidate_names: dict[str, list[str]] = field(default_factory=dict)
    """Label space → names given to ``predict`` instead of the checkpoint's (open vocabulary)."""
    zero_shot: list[Evaluation] = field(default_factory=list)
    """The evaluated tasks' zero-shot splits present in the data."""

    @property
    def evaluations(self) -> list[Evaluation]:
        """Every metrics entry: each task on its own dataset, then the zero-shot ones."""
        own = [Evaluation(name, name, TASKS[name].dataset, self.split) for name in self.tasks]
        return own + self.zero_shot


def read_class_names(path: str | Path) -> dict[str, list[str]] | list[str]:
    """A ``--class-names`` file: ``.json`` = {label space: [names]} (e.g. {"imagenet": [...], "coco": [...]});
    any other file = one name per line (blank lines ignored), used for every label space evaluated."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"class names file not found: {path}")
    if path.suffix == ".json":
        names = json.loads(path.read_text())
        if not isinstance(names, dict) or not all(isinstance(v, list) and v for v in names.values()):
            raise ValueError(f"{path}: expected a JSON object {{label space: [name, ...]}}")
        return {space: [str(n) for n in values] for space, values in names.items()}
    names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not names:
        raise ValueError(f"{path}: no class names")
    return names


def checkpoint_config(checkpoint_dir: str | Path) -> ModelConfig:
    """The config of a saved checkpoint, read without building the model; refuses an incomplete folder."""
    return load_config(checkpoint_dir)


def plan_evaluation(checkpoint_dir: str | Path, data_root: str | Path, *, split: str = "val",
                    tasks: list[str] | None = None,
                    class_names: dict[str, list[str]] | list[str] | None = None,
                    config: ModelConfig | None = None) -> EvaluationPlan:
    """Check the inputs and decide the tasks (see the module docstring); raises on bad input. ``config``: the
    config of a model in memory (``checkpoint_dir`` is then None)."""
    model_dir = model_folder(checkpoint_dir) if config is None else None
    config = checkpoint_config(model_dir) if config is None else config
    manifest = load_manifest(data_root)
    names = list(TASKS) if tasks is None else [get_task(name).name for name in tasks]
    plan = EvaluationPlan(model_dir, Path(data_root), split, config, manifest, [])
    for name in TASKS:
        if name not in names:
            continue
        for dataset, zero_shot_split in TASKS[name].zero_shot_splits:  # optional data: absent = not evaluated
            if TASKS[name].missing_evaluation_data(manifest, dataset, zero_shot_split) is None:
                plan.zero_shot.append(Evaluation(f"{name}_{dataset}", name, dataset, zero_shot_split))
        reason = TASKS[name].missing_evaluation_data(manifest, TASKS[name].dataset, split)
        if reason:
            plan.skipped_tasks[name] = reason
            continue
        space = TASKS[name].label_space
        if space is not None:
            override = class_names.get(space) if isinstance(class_names, dict) else class_names
            if override is not None:
                plan.candidate_names[space] = list(override)
            else:
                _check_class_names(space, config.class_names.get(space, []), manifest["class_names"][space],
                                   checkpoint_dir, data_root)
        plan.tasks.append(name)
    # One split per dataset in the prediction stream: a zero-shot dataset is never another task's own.
    own = {TASKS[name].dataset for name in plan.tasks}
    plan.zero_shot = [entry for entry in plan.zero_shot if entry.dataset not in own]
    if not plan.evaluations:
        raise ValueError(f"nothing to evaluate on split {split!r} of {data_root}: {plan.skipped_tasks}")
    return plan


def evaluate(checkpoint_dir: str | Path, data_root: str | Path, *, split: str = "val",
             tasks: list[str] | None = None, out_dir: str | Path,
             class_names: dict[str, list[str]] | list[str] | None = None, concurrency: int = 1,
             batch_size: int = 16, max_images: int | None = None, num_cpus: float = 0.5,
             meteor: bool = True, in_process: bool = False, precision: str = "auto", figures: bool = True,
             model=None) -> dict:
    """Evaluate a checkpoint on ``split`` of a converted data folder; Ray must already be initialized
    (unless ``in_process``).

    Args:
        checkpoint_dir: a directory written by ``unip2.save`` (e.g. a run's ``checkpoint/``), or a training
            checkpoint holding one in ``model/``.
        data_root: the converted data folder (holding ``manifest.json``).
        split: the split to evaluate ("val", or "test" for Karpathy captions).
        tasks: task names (default: every registered task with data for the split).
        out_dir: where the files are written (created).
        class_names: candidate names replacing the checkpoint's (open vocabulary): {label space: names},
            or one list for every label space; predictions are scored against the data by name.
        concurrency: predictor actors (each holds one copy of the model; one GPU each on a GPU cluster,
            so at most the number of GPUs).
        batch_size: rows per ``map_batches`` batch.
        max_images: evaluate only the first N rows of each dataset's split.
        num_cpus: CPUs reserved per actor when the cluster has no GPU (one GPU per actor otherwise).
        meteor: compute METEOR (a Java process, ~10 s).
        in_process: predict in this process (``predict_in_process``: the same rows, batches and predictions,
            ``num_cpus`` threads) instead of a Ray Data pipeline and actor, whose start costs ~15 s on
            2 CPUs: for small splits evaluated where this process may use the CPU (sweep trials).
        precision: the predictors' ``train.precision`` (auto: bf16 where the hardware has it natively).
        figures: draw ``predictions.png`` (off for the validations during training).
        model: a model in memory to evaluate instead of a saved one (``checkpoint_dir`` None; in this process:
            the validations during training). It is put in eval mode and back.
    Returns:
        The content of ``metrics.json``: {task: metrics} for each evaluated task and {``<task>_<dataset>``:
        metrics} for each zero-shot split evaluated, plus "zero_shot" {key: {"task", "dataset", "split"}},
        "checkpoint", "split", "data", "annotations" {"instances", "captions"}, "skipped_images"
        {key: count}, "skipped_tasks" {key: reason}, "files" {kind: path}, "parameters", "wall_time_s".
    """
    import ray

    start = time.perf_counter()
    plan = plan_evaluation(checkpoint_dir, data_root, split=split, tasks=tasks, class_names=class_names,
                           config=None if model is None else model.config)
    in_process = in_process or model is not None
    if not in_process and not ray.is_initialized():
        raise RuntimeError("evaluate() runs inside a started Ray: call ray.init first (pipelines/evaluate.py does)")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    options = {name: {"class_names": plan.candidate_names[TASKS[name].label_space]}
               for name in plan.tasks if TASKS[name].label_space in plan.candidate_names}
    by_dataset: dict[str, list[str]] = defaultdict(list)
    dataset_split: dict[str, str] = {}
    for entry in plan.evaluations:
        by_dataset[entry.dataset].append(entry.task)
        dataset_split[entry.dataset] = entry.split
    files_by_dataset = {d: split_files(plan.data_root, d, s) for d, s in dataset_split.items()}
    sizes = dict(batch_size=batch_size, concurrency=concurrency, max_images=max_images, num_cpus=num_cpus,
                 precision=precision)
    if model is not None:
        was_training = model.training
        model.eval()
        try:
            tables = predict_in_process(model, files_by_dataset, dict(by_dataset), options, **sizes)
        finally:
            model.train(was_training)
    elif in_process:
        tables = predict_in_process(plan.checkpoint_dir, files_by_dataset, dict(by_dataset), options, **sizes)
    else:
        tables = predict_splits(plan.checkpoint_dir, files_by_dataset, dict(by_dataset), options, **sizes)

    manifest = plan.manifest
    instances = manifest.get("annotations", {}).get("instances", {}).get(split)
    captions = manifest.get("annotations", {}).get("captions", {}).get(split)
    annotation_files = {kind: Path(files[split]) for kind, files in manifest.get("annotations", {}).items()
                        if files.get(split)}
    context = MetricContext(out_dir=out_dir, data_class_names=manifest["class_names"],
                            category_ids=manifest.get("coco_category_ids", []), annotation_files=annotation_files,
                            meteor=meteor)
    metrics: dict = {}
    files: dict[str, str] = {}
    skipped_images: dict[str, int] = {}
    outputs: dict[str, TaskOutput] = {}  # the tasks on their own datasets, for the picture
    zero_shot: dict[str, dict] = {}
    for entry in plan.evaluations:
        output, skipped_images[entry.key] = _task_output(tables[entry.dataset], entry.task)
        if not output.predictions:
            plan.skipped_tasks[entry.key] = "no decodable image in the split"
            continue
        metrics[entry.key], written = TASKS[entry.task].evaluate(output, context)
        files |= written
        if entry.key == entry.task:
            outputs[entry.task] = output
        else:
            zero_shot[entry.key] = {"task": entry.task, "dataset": entry.dataset, "split": entry.split}
        metric = TASKS[entry.task].metric
        logger.info("%s: %s = %s", entry.key, metric, metrics[entry.key].get(metric))

    panels = grid_panels({name: o.predictions for name, o in outputs.items()},
                         lambda dataset, ids: _images_by_id(plan, dataset, ids),
                         {name: TASKS[name].dataset for name in outputs}) if figures else []
    if panels:
        files["predictions"] = str(draw_prediction_grid(panels, out_dir / "predictions.png"))
    result = metrics | {
        "zero_shot": zero_shot,
        "checkpoint": str(Path(checkpoint_dir).resolve()) if model is None else None, "split": split, "data": str(Path(data_root).resolve()),
        "annotations": {"instances": instances, "captions": captions},
        "skipped_images": skipped_images, "skipped_tasks": plan.skipped_tasks,
        "candidate_names": {space: len(names) for space, names in plan.candidate_names.items()},
        "parameters": parameter_count(plan.checkpoint_dir) if model is None else
        sum(p.numel() for p in model.parameters()), "max_images": max_images,
    }
    result["files"] = files | {"metrics": str(out_dir / "metrics.json"), "report": str(out_dir / "report.md")}
    result["wall_time_s"] = round(time.perf_counter() - start, 2)
    write_report(result, out_dir / "report.md", data_description=_data_description(instances or captions, data_root))
    (out_dir / "metrics.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def predict_splits(checkpoint_dir: Path, files: dict[str, list[Path]], tasks_by_dataset: dict[str, list[str]],
                   options: dict, *, batch_size: int, concurrency: int, max_images: int | None,
                   num_cpus: float, precision: str = "auto") -> dict[str, pa.Table]:
    """Ray Data: every dataset's split, read and unioned into one stream → ``BatchPredictor`` actors →
    {dataset: its output rows, in row order}. One pipeline, so each actor loads the checkpoint once."""
    import ray
    import ray.data

    context = ray.data.DataContext.get_current()
    preserve_order = context.execution_options.preserve_order
    context.execution_options.preserve_order = True  # max_images takes the first rows, reproducibly
    try:
        parts, columns = [], {}
        for dataset, paths in files.items():
            names = pq.read_schema(paths[0]).names
            columns[dataset] = [name for name in annotation_columns() if name in names]
            part = ray.data.read_parquet([str(p) for p in paths]).select_columns(
                ["image", "image_id", *columns[dataset]])
            if max_images is not None:
                part = part.limit(max_images)
            parts.append(part.map_batches(to_row_schema, fn_kwargs={"dataset": dataset}, batch_format="pyarrow",
                                          batch_size=None, udf_modifying_row_count=False))
        rows = parts[0].union(*parts[1:]) if len(parts) > 1 else parts[0]
        rows = rows.map_batches(
            BatchPredictor, fn_constructor_kwargs={"checkpoint_dir": str(checkpoint_dir),
                                                   "tasks_by_dataset": tasks_by_dataset,
                                                   "columns_by_dataset": columns, "options": options,
                                                   "precision": precision},
            batch_size=batch_size, batch_format="pyarrow", compute=ray.data.ActorPoolStrategy(size=concurrency),
            udf_modifying_row_count=False, **({"num_gpus": 1} if cluster_has_gpus() else {"num_cpus": num_cpus}))
        batches = [b for b in rows.iter_batches(batch_size=None, batch_format="pyarrow") if b.num_rows]
    finally:
        context.execution_options.preserve_order = preserve_order
    table = pa.concat_tables(batches) if batches else None
    return {dataset: table.filter(pc.equal(table.column("dataset"), dataset)) if table is not None else None
            for dataset in files}


def predict_in_process(checkpoint_dir, files: dict[str, list[Path]], tasks_by_dataset: dict[str, list[str]],
                       options: dict, *, batch_size: int, concurrency: int, max_images: int | None,
                       num_cpus: float, precision: str = "auto") -> dict[str, pa.Table]:
    """``predict_splits`` without Ray: the same rows (each split's first ``max_images``, in order) through one
    ``BatchPredictor`` here, with the torch threads Ray would give its actor (``num_cpus``, at least 1);
    ``concurrency`` is not used. Batches of ``batch_size`` never mix datasets, as in the Ray Data stream
    (a union of each split's blocks); a prediction depends on its batch by float rounding only, and Ray Data
    also ends a batch at a block's end, so splits read as several blocks may differ in the last digits.
    ``checkpoint_dir``: a saved model's folder, or the model itself (in memory)."""
    import torch

    annotations = annotation_columns()
    columns = {dataset: [name for name in annotations if name in pq.read_schema(paths[0]).names]
               for dataset, paths in files.items()}
    predictor = BatchPredictor(checkpoint_dir if isinstance(checkpoint_dir, torch.nn.Module) else str(checkpoint_dir),
                               tasks_by_dataset, columns, options, precision=precision)
    tables = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, int(num_cpus)))
    try:
        for dataset, paths in files.items():
            rows = to_row_schema(_first_rows(paths, ["image", "image_id", *columns[dataset]], max_images), dataset)
            batches = [predictor(rows.slice(start, batch_size)) for start in range(0, rows.num_rows, batch_size)]
            tables[dataset] = pa.concat_tables(batches) if batches else None
    finally:
        torch.set_num_threads(threads)
    return tables


def _first_rows(paths: list[Path], columns: list[str], count: int | None) -> pa.Table:
    """The first ``count`` rows (all when None) of the shards ``paths``, in order."""
    tables, left = [], count
    for path in paths:
        table = pq.read_table(path, columns=columns)
        tables.append(table if left is None else table.slice(0, left))
        if left is not None:
            left -= tables[-1].num_rows
            if left <= 0:
                break
    return pa.concat_tables(tables)


def parameter_count(checkpoint_dir: str | Path) -> int:
    """Number of parameters in the checkpoint's weights file (read from its header, nothing loaded)."""
    from safetensors import safe_open

    total = 0
    with safe_open(str(Path(checkpoint_dir) / WEIGHTS), framework="numpy") as weights:
        for key in weights.keys():
            count = 1
            for size in weights.get_slice(key).get_shape():
                count *= size
            total += count
    return total


def _task_output(table: pa.Table, task_name: str) -> tuple[TaskOutput, int]:
    """A task's decodable predictions with their rows' labels / references, and the skipped count."""
    if table is None or not table.num_rows:
        return TaskOutput([]), 0
    predictions = decode_predictions(table, task_name)
    keep = [i for i, p in enumerate(predictions) if "skipped" not in p]
    for prediction in predictions:
        if "skipped" in prediction:
            logger.warning("%s: image %s skipped: %s", task_name, prediction["image_id"], prediction["skipped"])
    annotations = {name: [None if v is None else json.loads(v) for v in table.column(name).to_pylist()]
                   for name in TASKS[task_name].eval_columns}
    output = TaskOutput([predictions[i] for i in keep], {name: [values[i] for i in keep]
                                                         for name, values in annotations.items()})
    return output, len(predictions) - len(keep)


def _images_by_id(plan: EvaluationPlan, dataset: str, image_ids: list[int]) -> dict[int, bytes]:
    """Encoded images of ``image_ids`` from the split's shards, reading until all are found."""
    wanted, found = set(image_ids), {}
    for path in split_files(plan.data_root, dataset, plan.split):
        for batch in pq.ParquetFile(path).iter_batches(batch_size=64, columns=["image_id", "image"]):
            for image_id, data in zip(batch.column("image_id").to_pylist(), batch.column("image").to_pylist()):
                if image_id in wanted:
                    found[image_id] = data
            if len(found) == len(wanted):
                return found
    return found


def _check_class_names(space: str, checkpoint: list[str], data: list[str], checkpoint_dir, data_root) -> None:
    if list(checkpoint) == list(data):
        return
    index = next((i for i, (a, b) in enumerate(zip(checkpoint, data)) if a != b), min(len(checkpoint), len(data)))
    first = (f"first difference at index {index}: checkpoint "
             f"{checkpoint[index] if index < len(checkpoint) else '(end)'!r} vs data "
             f"{data[index] if index < len(data) else '(end)'!r}")
    raise ClassNamesMismatch(
        f"class names for label space {space!r} differ: checkpoint {checkpoint_dir} has {len(checkpoint)}, "
        f"data {data_root} has {len(data)}; {first}. Give candidate names with --class-names "
        f"(class_names=...) to evaluate with other names.")


def _data_description(annotation_file: str | None, data_root) -> str:
    """The annotation file's ``info.description`` (e.g. "unip2 shapes world"), else the folder's path."""
    if annotation_file and Path(annotation_file).is_file():
        info = json.loads(Path(annotation_file).read_text()).get("info") or {}
        if info.get("description"):
            return str(info["description"])
    return f"the data in {Path(data_root).resolve()}"
