"""Starting on the cluster at hand: ``scale.num_workers: auto`` resolved from the cluster's resources, and a start
the cluster cannot hold refused within a minute naming what it asked and what is there, with no Ray left behind."""

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from pipelines.run.cluster_fit import ClusterTooSmall, auto_worker_count, resolve_worker_count
from pipelines.training.trainer import make_trainer
from unip2.run_config import load_run_config

ROOT = Path(__file__).resolve().parents[2]


def test_auto_workers_are_the_gpus_else_the_cpu_slots():
    run = load_run_config(overrides=["scale.num_workers=auto", "scale.min_workers=3"])
    assert run.scale.num_workers == "auto"
    assert auto_worker_count(run, {"CPU": 96.0, "GPU": 8.0}) == 8
    assert auto_worker_count(run, {"CPU": 2.0}) == 2  # the defaults: 0.5 CPU + 1 loader × 0.5 CPU per worker
    assert auto_worker_count(run, {"CPU": 0.5}) == 1  # at least one (the start is then refused if it cannot fit)
    cpu_only = load_run_config(overrides=["scale.use_gpu=false", "scale.cpus_per_worker=2", "data.loader_cpus=2",
                                          "data.loader_concurrency=4"])
    assert auto_worker_count(cpu_only, {"CPU": 96.0, "GPU": 8.0}) == 9  # 96 // (2 + 4 × 2)
    resolve_worker_count(run, {"CPU": 2.0})
    assert run.scale.num_workers == 3  # an elastic run keeps its minimum
    assert run.learning_rate_scale(3) == 1.0


def test_auto_workers_fill_the_test_cluster(ray_local):
    run = load_run_config(overrides=["scale.num_workers=auto"])
    resolve_worker_count(run, ray_local.cluster_resources())
    assert run.scale.num_workers == 2  # 2 CPUs / (0.5 per worker + 1 loader × 0.5)


def small_run(embedded_data, tiny_config, overrides):
    run = load_run_config(overrides=[f"data.root={embedded_data}", "scale.use_gpu=false", *overrides])
    run.model.class_names = dict(tiny_config.class_names)
    return run


@pytest.mark.parametrize("overrides, field, workers", [
    (["scale.num_workers=64"], "scale.num_workers", 64),
    (["scale.num_workers=8", "scale.min_workers=3"], "scale.min_workers", 3),  # elastic: its minimum must fit
])
def test_a_start_the_cluster_cannot_hold_is_refused_after_the_wait(ray_local, embedded_data, tiny_config, tmp_path,
                                                                    overrides, field, workers):
    run = small_run(embedded_data, tiny_config, [*overrides, "scale.resources_wait_s=2"])
    started = time.monotonic()
    with pytest.raises(ClusterTooSmall) as err:
        make_trainer(run, out=tmp_path / "run", data_root=embedded_data)
    waited = time.monotonic() - started
    assert 2.0 <= waited < 6.0  # it waited for the cluster to grow, then refused
    assert err.value.field == field
    cpus = ray_local.cluster_resources()["CPU"]
    assert (f"{workers} workers × {{CPU: 0.5}} + their data loaders (0.5 CPU each) need {workers:g} CPU; "
            f"the cluster has {cpus:g} CPU") in str(err.value)


def test_an_elastic_start_whose_minimum_fits_is_not_refused(ray_local, embedded_data, tiny_config, tmp_path):
    run = small_run(embedded_data, tiny_config, ["scale.num_workers=64", "scale.min_workers=1",
                                                 "scale.resources_wait_s=0"])
    trainer = make_trainer(run, out=tmp_path / "run", data_root=embedded_data)
    assert trainer.scaling_config.num_workers == (1, 64)


def ray_processes_under(folder: Path) -> list[str]:
    """Command lines of the running processes that name ``folder`` (a local Ray's session lives there)."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            text = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:  # exited meanwhile
            continue
        if str(folder) in text:
            found.append(text)
    return found


def test_the_driver_refuses_within_a_minute_and_leaves_no_ray_running(embedded_data, tmp_path):
    """The measured hang: stage 1 of ``scale.num_workers=64`` on this machine waited silently until stopped, and
    stopping it left Ray's processes behind."""
    ray_tmp = Path(tempfile.mkdtemp(prefix="ray-refusal-", dir="/tmp"))  # short: Ray's socket paths live there
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(PYTHONPATH=str(ROOT), RAY_TMPDIR=str(ray_tmp))
    command = [sys.executable, "pipelines/train.py", "--out", str(tmp_path / "run"), "scale.num_workers=64",
               "train.steps=4", f"data.root={embedded_data}", f"data.cache_dir={tmp_path / 'cache'}"]
    started = time.monotonic()
    finished = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    elapsed = time.monotonic() - started
    console = finished.stdout + finished.stderr
    assert finished.returncode == 2, console[-3000:]
    assert elapsed < 60, console[-3000:]
    assert "[pretrain] stage 1" in console  # refused where the hang was seen
    assert re.search(r"error: scale\.num_workers: 64 workers × \{CPU: 0\.5\} \+ their data loaders \(0\.5 CPU each\) "
                     r"need 64 CPU; the cluster has \d+ CPU", console), console[-3000:]
    assert "Traceback" not in console
    assert any(ray_tmp.iterdir())  # the driver's Ray did live there ...
    assert ray_processes_under(ray_tmp) == []  # ... and none of its processes is left
    shutil.rmtree(ray_tmp, ignore_errors=True)

