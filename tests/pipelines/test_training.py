"""Multi-task training on a real local Ray (2 CPU workers, tiny model): unmixed steps, exact resume,
and the 2-worker step equal to one process on the concatenated batch."""

import json
import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import load_file

import unip2
from pipelines.run.prepare import prepare_run
from pipelines.data.step_stream import StepBatchLoader
from pipelines.data.stream_spec import StreamSpec
from pipelines.training.trainer import fit
from unip2.optim import MTAdamW
from unip2.schedules import with_piece
from unip2.training_setup import TaskLoss, optimizer_for

from event_files import scalars
from loop_hooks import FaultHooks

SMALL = ["pretrain.encoders=[]", "scale.num_workers=2", "scale.cpus_per_worker=0.5", "data.loader_cpus=0.25", "optim.warmup_steps=2",
         "train.log_every=2", "model.proposals.num_queries=12", "model.image_size=64"]


def small_batches(tasks=("classification", "detection", "instance_segmentation", "captioning", "retrieval")):
    return [f"tasks.{t}.batch_size=2" for t in tasks]


def weights(run_dir):
    return load_file(str(run_dir / "model" / "model.safetensors"))


def train(tmp_path, name, overrides, hooks=None):
    run, out, root = prepare_run(None, overrides, out=str(tmp_path / name))
    return run, out, root, fit(run, out=out, data_root=root, hooks=hooks)


def test_short_run_trains_every_worker_on_one_task_per_step(ray_local, embedded_data, tmp_path):
    trace = tmp_path / "trace"
    trace.mkdir()
    # Classification is drawn most and reads 12 rows per worker: its 48 training rows pass several epochs.
    run, out, root, checkpoint = train(
        tmp_path, "short", SMALL + small_batches() + [
            f"data.root={embedded_data}", "train.steps=10", "train.checkpoint_every=5",
            "tasks.classification.batch_size=12", "tasks.classification.sampling_weight=6",
            "train.validate_every=5", "train.validation_rows=4"],
        FaultHooks(trace_dir=trace, nan_steps=(3,)))
    state = json.loads((checkpoint / "train_state.json").read_text())
    assert state["step"] == 10 and len(state["history"]) == 5
    assert state["nonfinite_steps"] == 1  # the NaN step was skipped and counted, training went on
    assert all(torch.isfinite(v).all() for v in weights(checkpoint).values())
    rank0 = [line.split() for line in (trace / "rank0.txt").read_text().splitlines()]
    rank1 = [line.split() for line in (trace / "rank1.txt").read_text().splitlines()]
    assert [int(r[0]) for r in rank0] == list(range(10))
    assert [r[1] for r in rank0] == [r[1] for r in rank1]  # unmixed: the same task on every worker
    assert [r[2] for r in rank0] != [r[2] for r in rank1]  # ... with different rows
    assert len({r[1] for r in rank0}) >= 2
    classification_steps = sum(r[1] == "classification" for r in rank0)
    assert classification_steps * 2 * 12 > 48  # more than one epoch of the smallest dataset streamed
    # Validation during training: each task's headline metrics at steps 5 and 10, on 4 rows of its split.
    assert [entry["step"] for entry in state["validation"]] == [5, 10]
    assert {"val/classification/top1", "val/detection/bbox_AP", "val/captioning/CIDEr"} <= set(state["validation"][0])
    # Live metrics: every progress window reported through Ray Train, in the run folder's TensorBoard files.
    logged = scalars(out / "tensorboard")
    assert sorted(logged["val/classification/top1"]) == [5, 6, 8, 10]  # each report after a validation carries it
    assert sorted(logged["lr"]) == [2, 4, 5, 6, 8, 10]  # every window, and the checkpoint at step 5
    assert {tag for tag in logged if tag.startswith("loss/")} <= {f"loss/{t}" for t in run.tasks} and logged[
        "skipped_images"][10] == 0
    model = unip2.load(checkpoint / "model")  # the checkpoint is a plain unip2 model folder
    assert model.config.image_size == 64
    assert all(model.config.task_input_settings(name).image_size == 64 for name in run.tasks)
    assert model.config.tasks == run.model.tasks  # every task's options are saved with the model


def test_a_worker_failure_resumes_exactly(ray_local, embedded_data, tmp_path):
    """With ω_k and s_k changing at given steps (a schedule, as Population Based Training writes them): the resumed
    run trains the same task on the same rows at every step as the uninterrupted one, to the same weights."""
    schedule = ["tasks.classification.sampling_weight={0: 4, 3: 0.25}", "tasks.retrieval.sampling_weight={0: 1, 6: 6}",
                "tasks.detection.omega={0: 1, 5: 3}"]
    common = SMALL + small_batches() + schedule + [f"data.root={embedded_data}", "train.steps=8",
                                                   "train.checkpoint_every=2", "scale.max_failures=1"]
    traces = {name: tmp_path / f"trace_{name}" for name in ("straight", "failed")}
    for folder in traces.values():
        folder.mkdir()
    *_, straight = train(tmp_path, "straight", common, FaultHooks(trace_dir=traces["straight"]))
    *_, resumed = train(tmp_path, "failed", common,
                        FaultHooks(fail_at_step=5, fail_marker=tmp_path / "fired", trace_dir=traces["failed"]))
    assert (tmp_path / "fired").read_text() == "5"
    lines = {name: [line.split() for line in (folder / "rank0.txt").read_text().splitlines()]
             for name, folder in traces.items()}
    assert [int(line[0]) for line in lines["failed"]] == [0, 1, 2, 3, 4, 4, 5, 6, 7]  # resumed from step 4
    replayed = lines["failed"][:5] + lines["failed"][6:]
    assert replayed == lines["straight"]  # step, task and image ids of every step
    assert len({line[1] for line in lines["straight"]}) >= 2
    a, b = weights(straight), weights(resumed)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-6), key

    # Population Based Training's exploit: a run starts from the straight run's step-6 checkpoint (weights,
    # optimizer, step) with other values from step 6 on. It trains steps 6 and 7 exactly as one run from step 0 with
    # the whole schedule (the straight run's up to step 6, the new values after) does.
    donor = next((tmp_path / "straight" / "ray").rglob("checkpoint_0000006"))
    new_values = {"tasks.classification.sampling_weight": ({0: 4, 3: 0.25}, 2.0),
                  "tasks.detection.omega": ({0: 1, 5: 3}, 0.5), "optim.lr": (2e-4, 1e-4)}
    whole = common + [f"{key}={json.dumps(with_piece(past, 6, value))}" for key, (past, value) in new_values.items()]
    for name in ("copied", "whole"):
        (tmp_path / f"trace_{name}").mkdir()
    *_, copied = train(tmp_path, "copied", whole + [f"train.resume_from={donor}"],
                       FaultHooks(trace_dir=tmp_path / "trace_copied"))
    *_, one_run = train(tmp_path, "whole", whole, FaultHooks(trace_dir=tmp_path / "trace_whole"))
    traced = {name: (tmp_path / f"trace_{name}" / "rank0.txt").read_text().splitlines() for name in ("copied", "whole")}
    assert traced["copied"] == traced["whole"][6:] and len(traced["copied"]) == 2
    a, b = weights(copied), weights(one_run)
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-6), key
    assert any(not torch.equal(weights(straight)[key], a[key]) for key in a)  # the new values changed steps 6-7


# The workers recompute their blocks and class-name chunks in backward (DDP with find_unused_parameters must still
# see every parameter); the one-process reference keeps its activations.
MEMORY_SAVING = ["train.activation_checkpointing=true", "model.candidate_chunk_tokens=8"]


@pytest.mark.parametrize("memory", [[], MEMORY_SAVING], ids=["plain", "activation_checkpointing"])
def test_two_worker_step_equals_one_process_averaging_the_workers_gradients(memory, ray_local, embedded_data, tmp_path):
    overrides = SMALL + ["tasks={classification: {batch_size: 3}}", f"data.root={embedded_data}",
                         "train.steps=2", "train.checkpoint_every=2", "optim.warmup_steps=0", "optim.min_lr_ratio=1.0",
                         # A large ε keeps Adam from turning float noise in near-zero gradients into ±lr steps.
                         "optim.eps=1e-2", *memory,
                         # fp32: the replica below is compared to 1e-3, below bf16's rounding of the forward.
                         "train.precision=fp32"]
    run, out, root, checkpoint = train(tmp_path, "ddp", overrides)
    assert list(run.tasks) == ["classification"]

    spec = StreamSpec.of(run, root)
    torch.manual_seed(run.train.seed)
    model = unip2.build_model(run.model)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = optimizer_for(model, run.optim)  # the workers' optimizer: the same groups and lr scales
    assert isinstance(optimizer, MTAdamW)
    loss_module = TaskLoss(model)
    loaders = [StepBatchLoader(spec, rank) for rank in range(2)]
    for step in range(2):
        parts = [loader.load(step)["batches"][0] for loader in loaders]
        optimizer.zero_grad(set_to_none=True)
        # DDP averages the workers' gradients; each worker's BatchNorm normalizes with its own batch.
        for part in parts:
            loss, _ = loss_module("classification", unip2.tasks.TASKS["classification"].collate(part))
            (loss / len(parts)).backward()
        optimizer.step(omega=run.tasks["classification"].omega, s=1.0)
    distributed = weights(checkpoint)
    single = model.state_dict()
    # Parameters only: BatchNorm running statistics are rank 0's own (DDP broadcasts them, does not average).
    parameters = {name for name, _ in model.named_parameters()}
    names = [n for n in distributed if n in parameters]
    update_single = torch.cat([(single[n] - initial[n]).flatten() for n in names])
    update_ddp = torch.cat([(distributed[n] - initial[n]).flatten() for n in names])
    assert update_single.norm() > 0
    assert (update_ddp - update_single).norm() / update_single.norm() < 1e-3


def test_accumulation_splits_the_rows_of_the_larger_batch_into_micro_batches(embedded_data, tiny_config):
    """A steps of b rows per worker read exactly the rows one step of A × b would: the plan (and its exact resume)
    is the larger batch's, each micro-batch a consecutive part of it."""
    from unip2.run_config import load_run_config

    def step_rows(overrides, rank, step):
        run = load_run_config(overrides=SMALL + [f"data.root={embedded_data}", "train.steps=6", *overrides])
        run.model.class_names = dict(tiny_config.class_names)
        item = StepBatchLoader(StreamSpec.of(run, embedded_data), rank).load(step)
        return item["task"], [[int(i) for i in batch["image_id"]] for batch in item["batches"]]

    tasks = ("tasks={{classification: {{batch_size: {0}}}, detection: {{batch_size: {0}}}, "
             "retrieval: {{batch_size: {0}}}}}")
    for rank in (0, 1):
        for step in range(6):
            task, parts = step_rows([tasks.format(2)], rank, step)
            task_a, micro = step_rows([tasks.format(2), "train.accumulation_steps=2"], rank, step)
            task_b, (whole,) = step_rows([tasks.format(4)], rank, step)
            assert len(parts) == 1 and len(micro) == 2 and task == task_a == task_b
            assert [len(m) for m in micro] == [2, 2] and micro[0] + micro[1] == whole


def test_a_run_with_gradient_accumulation_trains(ray_local, embedded_data, tmp_path):
    trace = tmp_path / "trace"
    trace.mkdir()
    run, out, root, checkpoint = train(tmp_path, "accumulated", SMALL + [
        "tasks={classification: {batch_size: 2}, retrieval: {batch_size: 2}}", f"data.root={embedded_data}",
        "train.steps=4", "train.checkpoint_every=4", "train.accumulation_steps=2"], FaultHooks(trace_dir=trace))
    state = json.loads((checkpoint / "train_state.json").read_text())
    assert state["step"] == 4 and state["nonfinite_steps"] == 0
    assert all(torch.isfinite(v).all() for v in weights(checkpoint).values())
    lines = [line.split() for r in (0, 1) for line in (trace / f"rank{r}.txt").read_text().splitlines()]
    assert sorted(int(line[0]) for line in lines) == sorted(list(range(4)) * 4)  # 2 micro-batches × 2 ranks a step
    for step in range(4):
        rows = [(line[1], i) for line in lines if int(line[0]) == step for i in line[2:]]
        assert len(rows) == 8 and len(set(rows)) == 8  # 2 ranks × 2 micro-batches × 2 rows, none twice


def test_retrieval_gathers_unequal_batches_when_one_worker_drops_a_corrupt_image(ray_local, embedded_data, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(embedded_data, data)
    shard = data / "coco_captions" / "train" / "part-00000.parquet"
    table = pq.read_table(shard)
    images = table.column("image").to_pylist()
    images[5] = b"\xff\xd8\xff truncated jpeg"
    pq.write_table(table.set_column(table.schema.get_field_index("image"), "image", pa.array(images, pa.binary())),
                   shard)
    trace = tmp_path / "trace"
    trace.mkdir()
    rows = pq.read_metadata(shard).num_rows + sum(pq.read_metadata(p).num_rows
                                                  for p in shard.parent.glob("*.parquet") if p != shard)
    steps = rows // 8  # one epoch: every row once, 4 per worker and step
    *_, checkpoint = train(tmp_path, "corrupt", SMALL + [
        "tasks={retrieval: {batch_size: 4}}", f"data.root={data}", f"train.steps={steps}",
        f"train.checkpoint_every={steps}"], FaultHooks(trace_dir=trace))
    state = json.loads((checkpoint / "train_state.json").read_text())
    assert state["step"] == steps and state["nonfinite_steps"] == 0
    assert sum(state["skipped_images"].values()) == 1
    sizes = [[len(line.split()) - 2 for line in (trace / f"rank{r}.txt").read_text().splitlines()] for r in (0, 1)]
    uneven = [step for step, (a, b) in enumerate(zip(*sizes)) if a != b]
    assert len(uneven) == 1 and sorted((sizes[0][uneven[0]], sizes[1][uneven[0]])) == [3, 4]


def test_consecutive_nonfinite_losses_stop_the_run(ray_local, embedded_data, tmp_path):
    overrides = SMALL + small_batches() + [f"data.root={embedded_data}", "train.steps=6", "train.max_bad_steps=2",
                                           "scale.max_failures=0", "scale.num_workers=1"]
    with pytest.raises(Exception, match="consecutive steps with a non-finite loss"):
        train(tmp_path, "nan", overrides, FaultHooks(nan_steps=(1, 2)))


def test_the_stream_prepares_each_task_with_the_settings_the_checkpoint_records(embedded_data, tiny_config):
    from unip2.run_config import load_run_config

    run = load_run_config(overrides=SMALL + small_batches() + [
        f"data.root={embedded_data}", "model.tasks.classification.image_size=32",
        "model.tasks.captioning.image_size=128", "model.tasks.captioning.max_text_length=12", "train.steps=40"])
    run.model.class_names = dict(tiny_config.class_names)
    spec, recorded = StreamSpec.of(run, embedded_data), run.model
    loader = StepBatchLoader(spec, rank=0)
    seen = {}
    for step in range(run.train.steps):
        task = loader.plan.rows_at(step, 0)[0]
        if task in ("classification", "captioning", "detection") and task not in seen:
            seen[task] = loader.load(step)["batches"][0]
    assert set(seen) == {"classification", "captioning", "detection"}
    for task, batch in seen.items():
        settings = recorded.task_input_settings(task)
        assert spec.inputs(task) == {"image_size": settings.image_size, "max_text_length": settings.max_text_length}
        assert batch["images"].shape[-1] == settings.image_size == {"classification": 32, "captioning": 128,
                                                                     "detection": 64}[task]
    assert spec.inputs("captioning")["max_text_length"] == 12 and seen["captioning"]["input_ids"].shape[1] <= 12


def test_invalid_config_is_refused_naming_the_field(embedded_data, tmp_path):
    from unip2.config_io import ConfigError

    with pytest.raises(ConfigError, match="tasks.detection.omega"):
        prepare_run(None, ["tasks.detection.omega=0", f"data.root={embedded_data}"], out=str(tmp_path / "a"))
    with pytest.raises(ConfigError, match="tasks.depth"):
        prepare_run(None, ["tasks.depth.omega=1", f"data.root={embedded_data}"], out=str(tmp_path / "b"))
    with pytest.raises(FileNotFoundError, match="nowhere"):
        prepare_run(None, ["data.root=/nowhere"], out=str(tmp_path / "c"))


def test_cloud_storage_uri_is_passed_to_ray_as_is(ray_local, embedded_data, tiny_config, tmp_path):
    """(On Ray: a trainer is sized against the cluster before it is built.)"""
    from pipelines.training.trainer import make_trainer
    from unip2.run_config import load_run_config

    run = load_run_config(overrides=["scale.storage_path=s3://bucket/unip2-runs", "scale.use_gpu=false",
                                     f"data.root={embedded_data}"])
    run.model.class_names = dict(tiny_config.class_names)
    trainer = make_trainer(run, out=tmp_path / "run", data_root=embedded_data)
    assert trainer.run_config.storage_path == "s3://bucket/unip2-runs"
