"""The default run's console, through the real entry point: ``python pipelines/train.py`` in a subprocess with
its own local Ray (2 workers: stage 1's encoders pretrained and cached, then the generalist on five tasks, then
the evaluation), as a user runs it. The console holds the run's own lines, each once; Ray's messages and every
worker's output are kept in the run folder's logs/. A second run finds stage 1 in the cache."""

import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import unip2
from event_files import scalars, wandb_history
from pipelines.stage1.encoders import ensure_pretrained_encoders
from unip2.model.tokenizer import tokenizer_for
from unip2.run_config import load_run_config

ROOT = Path(__file__).resolve().parents[2]
SMALL = ["scale.num_workers=2", "scale.cpus_per_worker=0.5", "data.loader_cpus=0.25", "optim.warmup_steps=2",
         "model.proposals.num_queries=12", "model.image_size=64",
         *[f"tasks.{t}.batch_size=2" for t in ("classification", "detection", "instance_segmentation",
                                                "captioning", "retrieval")]]
STAGE1 = ["pretrain.image_steps=2", "pretrain.text_steps=2", "pretrain.image_batch_size=4", "pretrain.text_batch_size=4"]
NOISE = ("Failed to query Ray Train Controller", "core_worker.cc", "deprecated", "Warning", "WARNING", "pid=")


def test_the_console_shows_each_progress_line_once_and_the_run_folder_keeps_the_full_log(embedded_data, tmp_path):
    out = tmp_path / "run"
    # The test session's own Ray settings (tests/conftest.py: every worker line shown) are not a user's.
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env["PYTHONPATH"] = str(ROOT)
    overrides = [*SMALL, *STAGE1, f"data.root={embedded_data}", f"data.cache_dir={tmp_path / 'cache'}",
                 "train.steps=6", "train.log_every=2", "train.checkpoint_every=6",
                 "logging.mlflow={}", "logging.wandb={mode: offline}"]  # both trackers' console kept quiet too
    command = [sys.executable, "pipelines/train.py", "--out", str(out), *overrides]
    finished = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
    console = [line for line in (finished.stdout + finished.stderr).splitlines() if line.strip()]
    assert finished.returncode == 0, "\n".join(console[-60:])

    assert [line for line, count in Counter(console).items() if count > 1] == []
    for noise in NOISE:
        assert [line for line in console if noise in line] == [], noise
    assert all(line.startswith(("[train] ", "[pretrain] ")) for line in console), console  # the run's own lines
    stage1 = [line.split()[2] for line in console if line.startswith("[pretrain] step ")]
    assert stage1 == ["2/4", "4/4"]
    assert sum(line.startswith("[pretrain] stage 1 done in") for line in console) == 1
    steps = [line.split()[2] for line in console if line.startswith("[train] step ")]
    assert steps == ["2/6", "4/6", "6/6"]
    assert sum(line.startswith("[train] finished 6 steps") for line in console) == 1

    logs = out / "logs"
    assert (logs / "driver.log").is_file()
    worker_files = sorted((logs / "ray").glob("worker-*.out")) + sorted((logs / "ray").glob("worker-*.err"))
    kept = [line for path in worker_files for line in path.read_text(errors="replace").splitlines()]
    for step in steps:  # rank 0's progress lines, in its own log file
        assert sum(line.startswith(f"[train] step {step} ") for line in kept) == 1
    assert set(kept) - set(console)  # what the console leaves out is kept

    # TensorBoard: both stages' progress windows, and the evaluation at the last step.
    logged = scalars(out / "tensorboard")
    assert sorted(logged["steps_per_s"]) == [2, 4, 6] and set(logged["eval/classification/top1"]) == {6}
    assert sorted(scalars(out / "pretrain" / "tensorboard")["steps_per_s"]) == [2, 4]

    # MLflow (a local file store in the run folder) and W&B (offline) hold the same curves and the evaluation.
    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    from mlflow.tracking import MlflowClient

    client, run_id = MlflowClient(tracking_uri=(out / "mlruns").as_uri()), (out / "mlflow_run_id").read_text()
    assert [m.step for m in client.get_metric_history(run_id, "steps_per_s")] == [2, 4, 6]
    losses = {tag for tag in logged if tag.startswith("loss/")}  # the tasks drawn in those 6 steps
    assert losses and losses <= set(client.get_run(run_id).data.metrics)
    assert [m.step for m in client.get_metric_history(run_id, "eval/classification/top1")] == [6]
    assert client.get_run(run_id).info.status == "FINISHED"
    tracked = wandb_history(out / "wandb")
    assert sorted(step for step in tracked["steps_per_s"] if step >= 0) == [2, 4, 6] and losses <= set(tracked)
    assert tracked["eval/classification/top1"][-1] == pytest.approx(logged["eval/classification/top1"][6])  # summary

    # The run trained from stage 1's files, and the next run with the same settings reuses them.
    saved = load_run_config(out / "run_config.yaml")
    cache = tmp_path / "cache" / "pretrained"
    assert Path(saved.model.backbone.pretrained_path).is_file() and cache in Path(saved.model.backbone.pretrained_path).parents
    assert (Path(saved.model.text.pretrained_path) / "tokenizer.json").is_file()
    run = load_run_config(None, overrides)
    run.model.class_names = saved.model.class_names
    again = ensure_pretrained_encoders(run, embedded_data, tmp_path / "second")
    assert again.model.backbone.pretrained_path == saved.model.backbone.pretrained_path
    assert again.model.text.pretrained_path == saved.model.text.pretrained_path
    assert not (tmp_path / "second").exists()  # nothing trained

    # pipelines/pretrain.py with the same settings finds the cache too, and --export copies the encoders out
    # in the layout the pretrained_path fields take.
    exported = tmp_path / "weights"
    command = [sys.executable, "pipelines/pretrain.py", "--out", str(tmp_path / "stage1"), "--export", str(exported),
               *overrides]
    finished = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    console = [line for line in (finished.stdout + finished.stderr).splitlines() if line.strip()]
    assert finished.returncode == 0, "\n".join(console[-30:])
    assert console[0].startswith("[pretrain] stage 1: using the cached image and text encoders"), console
    assert console[1:] == [f"[pretrain] model.backbone.pretrained_path={exported / 'image' / 'model.safetensors'}",
                           f"[pretrain] model.text.pretrained_path={exported / 'text'}"]
    run.model.backbone.pretrained_path = str(exported / "image" / "model.safetensors")
    run.model.text.pretrained_path = str(exported / "text")
    model = unip2.build_model(run.model, tokenizer_for(run.model.text))
    assert torch.equal(model.backbone.body.state_dict()["conv1.0.weight"],
                       load_file(exported / "image" / "model.safetensors")["conv1.0.weight"])


def test_stage1_cache_key_follows_the_data_not_where_it_was_converted_from(embedded_data, tmp_path):
    import json
    import shutil

    from pipelines.stage1.encoders import cache_key, stage1_run

    run = load_run_config(None, [f"data.root={embedded_data}"])
    run.model.class_names = {"imagenet": ["a", "b"], "coco": ["a", "b"]}
    stage = stage1_run(run, ["image", "text"])
    moved = tmp_path / "moved"
    shutil.copytree(embedded_data, moved)
    manifest = json.loads((moved / "manifest.json").read_text())
    manifest["sources"] = {name: f"/elsewhere/{name}" for name in manifest["sources"]}
    (moved / "manifest.json").write_text(json.dumps(manifest))
    assert cache_key(stage, moved) == cache_key(stage, embedded_data)
    manifest["datasets"]["imagenet"]["splits"]["train"]["rows"] += 1
    (moved / "manifest.json").write_text(json.dumps(manifest))
    assert cache_key(stage, moved) != cache_key(stage, embedded_data)
