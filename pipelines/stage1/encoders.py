"""Stage 1: the encoders pretrained alone before the generalist (the paper starts from a supervised ImageNet Swin and
a RoBERTa), on Ray like training, cached by everything they depend on and loaded as real weights are
(``pipelines/pretrain.py`` runs it alone; ``pipelines/train.py`` as its second step).

The image encoder (the backbone's timm architecture as a classifier) trains on the data of the task whose
``pretrains`` is ``image`` (classification), the text encoder (a masked LM of the configured family) on that of
the task whose ``pretrains`` is ``text`` (language modelling), each with its own AdamW (``pretrain.*`` in the run
config). The result lands in ``<data.cache_dir>/pretrained/<key>/``, keyed by everything it depends on, as users
download encoders: ``image/model.safetensors`` + ``config.json`` (timm's release layout) and ``text/`` (a
transformers directory with its tokenizer), with ``metrics.json`` (validation accuracy of each, training curves).
An encoder whose task has no training rows in the data folder (an ImageNet-only folder has no texts) is not
pretrained: the run says so and starts it from random weights (or is refused: ``pretrain.random_init``). An
encoder given a ``pretrained_path`` is not pretrained here.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import shutil
import time
from pathlib import Path

from pipelines.run import ray_runtime  # (first: sets Ray's environment before ray is imported)
from pipelines.training.loop_inputs import METRICS, PretrainInputs
from pipelines.run.prepare import RUN_CONFIG_FILE, resolve_data
from pipelines.training.trainer import checkpoint_to_local, torch_trainer
from pipelines.data.stream_spec import StreamSpec
from unip2 import config_io
from unip2.data.manifest import MANIFEST_FILE
from unip2.model.tokenizer import tokenizer_for
from unip2.data.manifest import load_manifest, train_rows
from unip2.run_config import ENCODER_WEIGHT_FIELDS, RunConfig, TaskRunConfig, load_run_config, weights_to_download
from unip2.tasks import TASKS, pretraining_task

# Manifest fields that name where the data was converted from: the same data converted elsewhere keeps its key.
MANIFEST_PATH_FIELDS = ("annotations", "sources")
IMAGE_WEIGHTS = Path("image") / "model.safetensors"


def encoders_to_pretrain(run: RunConfig) -> list[str]:
    """The encoders ``run.pretrain.encoders`` names that have no ``pretrained_path`` of their own."""
    given = run.encoder_weights()
    return [encoder for encoder in run.pretrain.encoders if given[encoder] is None]


def stage1_datasets(run: RunConfig, encoder: str) -> list[str]:
    """The datasets stage 1 trains ``encoder`` on: its task's in the run (``tasks.<task>.datasets``), else the
    task's own."""
    task = pretraining_task(encoder)
    return list(_chosen_datasets(run, task) or [TASKS[task].dataset])


def _chosen_datasets(run: RunConfig, task: str) -> list[str] | None:
    return run.tasks[task].datasets if task in run.tasks else None


def encoders_with_data(run: RunConfig, encoders: list[str], manifest: dict) -> list[str]:
    """Those of ``encoders`` whose stage-1 task has training rows in the data (``manifest``)."""
    return [encoder for encoder in encoders
            if pretraining_task(encoder) is not None and train_rows(manifest, stage1_datasets(run, encoder)) > 0]


def stage1_run(run: RunConfig, encoders: list[str]) -> RunConfig:
    """The run config stage 1 streams and trains: one task per encoder, weighted by its steps."""
    stage = copy.deepcopy(run)
    pretrain = run.pretrain
    settings = {"image": (pretrain.image_batch_size, pretrain.image_steps),
                "text": (pretrain.text_batch_size, pretrain.text_steps)}
    stage.tasks = {}
    for encoder in encoders:
        batch_size, steps = settings[encoder]
        task = pretraining_task(encoder)
        stage.tasks[task] = TaskRunConfig(batch_size=batch_size, sampling_weight=float(steps),
                                          datasets=_chosen_datasets(run, task))
    stage.train.steps = sum(settings[encoder][1] for encoder in encoders)
    stage.train.sampling = "unmixed"
    stage.train.accumulation_steps = 1  # stage 1's batches are pretrain.*_batch_size, one per step
    stage.train.stop_at = stage.train.resume_from = None  # the generalist's segment and start, not stage 1's
    if "image" in encoders:  # low resolution first, as ImageNet pretraining at 224
        stage.model.tasks[pretraining_task("image")].image_size = pretrain.image_size
    return stage


def cache_key(stage: RunConfig, data_root: Path) -> str:
    """Hash of everything stage 1's result depends on: the encoders' architectures, the tokenizer, stage 1's
    settings and the data (its manifest: splits, rows, shard files, class names; not the source paths)."""
    text = config_io.to_dict(stage.model.text) | {"pretrained_path": None, "tokenizer_path": None}
    parts = {
        "backbone": config_io.to_dict(stage.model.backbone) | {"pretrained_path": None},
        "text": text, "tokenizer": tokenizer_for(stage.model.text).to_json(),
        "pixels": [list(stage.model.pixel_mean), list(stage.model.pixel_std)],
        "pretrain": config_io.to_dict(stage.pretrain), "tasks": {name: config_io.to_dict(task) for name, task in stage.tasks.items()},
        "steps": stage.train.steps, "seed": stage.train.seed, "workers": stage.scale.num_workers,
        "precision": stage.train.precision,
        "classes": stage.model.class_names.get("imagenet"),
        "data": {k: v for k, v in json.loads((data_root / MANIFEST_FILE).read_text()).items()
                 if k not in MANIFEST_PATH_FIELDS},
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def cache_folder(run: RunConfig, stage: RunConfig, data_root: Path) -> Path:
    name = f"{run.model.backbone.name}-{'-'.join(sorted(stage.tasks))}-{cache_key(stage, data_root)}"
    return Path(run.data.cache_dir).expanduser().resolve() / "pretrained" / name


def run_pretrain_loop(inputs: PretrainInputs) -> None:
    """The function each stage-1 worker runs: ``pipelines.stage1.loop.pretrain_loop_per_worker``, imported in the
    worker only."""
    from pipelines.stage1.loop import pretrain_loop_per_worker

    pretrain_loop_per_worker(inputs)


def run_stage1(stage: RunConfig, *, data_root: Path, out: Path, target: Path) -> dict:
    """Train stage 1 on the connected Ray (run storage under ``out``; rerunning resumes) and move its outputs
    into ``target``; returns its metrics."""
    inputs = PretrainInputs(stream=StreamSpec.of(stage, data_root),
                            class_names=list(stage.model.class_names.get("imagenet") or []))
    trainer = torch_trainer(stage, functools.partial(run_pretrain_loop, inputs), name="pretrain",
                            storage_path=None, out=out)
    local = checkpoint_to_local(trainer.fit(), out / "last_checkpoint")
    staging = target.with_name(target.name + ".partial")
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    for name in ("image", "text", METRICS):
        if (local / name).exists():
            shutil.move(str(local / name), staging / name)
    config_io.save(stage, staging / "stage1_config.yaml")
    staging.rename(target)  # a finished cache only ever appears whole
    return json.loads((target / METRICS).read_text())


def ensure_pretrained_encoders(run: RunConfig, data_root: Path, out: Path) -> RunConfig:
    """Point every encoder that stage 1 covers at its cached pretraining, running stage 1 first when the cache
    has no result for this configuration; returns the run with ``pretrained_path`` filled in."""
    wanted = encoders_to_pretrain(run)
    encoders = encoders_with_data(run, wanted, load_manifest(data_root))
    without_data = [encoder for encoder in wanted if encoder not in encoders]
    if without_data and run.pretrain.random_init == "refuse":
        raise weights_to_download(run, without_data, f"not set, and stage 1 has no training rows for its task "
                                                     f"in {data_root}")
    for encoder in without_data:
        print(f"[pretrain] the {encoder} encoder starts from random weights: its stage-1 task "
              f"({pretraining_task(encoder)}) has no training rows in {data_root}", flush=True)
    if not encoders:
        return run
    stage = stage1_run(run, encoders)
    target = cache_folder(run, stage, data_root)
    if not target.is_dir():
        started = time.time()
        print(f"[pretrain] stage 1: pretraining the {' and '.join(encoders)} encoder"
              f"{'s' if len(encoders) > 1 else ''} ({stage.train.steps} steps); cached in {target}", flush=True)
        metrics = run_stage1(stage, data_root=data_root, out=out / "pretrain", target=target)
        shown = ", ".join(f"{encoder} {v['accuracy']:.3f}" for encoder, v in metrics["validation"].items())
        print(f"[pretrain] stage 1 done in {time.time() - started:.0f} s ({shown})", flush=True)
    else:
        print(f"[pretrain] stage 1: using the cached {' and '.join(encoders)} encoder"
              f"{'s' if len(encoders) > 1 else ''} in {target}", flush=True)
    run = copy.deepcopy(run)
    if "image" in encoders:
        run.model.backbone.pretrained_path = str(target / IMAGE_WEIGHTS)
    if "text" in encoders:
        run.model.text.pretrained_path = str(target / "text")
    return run


def pretrain_if_needed(run: RunConfig, data_root: Path, out: Path) -> RunConfig:
    """The launcher's stage-1 step: ``ensure_pretrained_encoders``, and the run folder's config records the
    encoders it now starts from (so a resumed run does not look for stage 1 again). An encoder neither given nor
    pretrained is said to start from random weights."""
    for encoder in run.random_encoders():
        print(f"[pretrain] the {encoder} encoder starts from random weights ({ENCODER_WEIGHT_FIELDS[encoder]} not set, {encoder} not in "
              "pretrain.encoders)", flush=True)
    pretrained = ensure_pretrained_encoders(run, data_root, out)
    if pretrained is not run:
        config_io.save(pretrained, out / RUN_CONFIG_FILE)
    return pretrained


def pretrained_overrides(config_path: str | None, overrides: list[str], out: Path) -> list[str]:
    """Stage 1 of a sweep's base run, once on its driver (Ray connected), before any trial: the overrides that
    point every trial's encoders at the result (none when nothing is to be pretrained)."""
    run = load_run_config(config_path, overrides)
    if not encoders_to_pretrain(run):
        return []
    root, manifest = resolve_data(run)
    if not run.model.class_names:
        run.model.class_names = {k: list(v) for k, v in manifest["class_names"].items()}
    pretrained = ensure_pretrained_encoders(run, root, out)
    paths = {"model.backbone.pretrained_path": (run.model.backbone, pretrained.model.backbone),
             "model.text.pretrained_path": (run.model.text, pretrained.model.text)}
    return [f"{field}={after.pretrained_path}" for field, (before, after) in paths.items()
            if after.pretrained_path != before.pretrained_path]
