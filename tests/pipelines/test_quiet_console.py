"""The default run's console, through the real entry point: ``python pipelines/train.py`` in a subprocess with
its own local Ray (2 workers, all five tasks, then the evaluation), as a user runs it. The console holds the
run's own lines, each once; Ray's messages and every worker's output are kept in the run folder's logs/."""

import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SMALL = ["scale.num_workers=2", "scale.cpus_per_worker=0.5", "data.loader_cpus=0.25", "optim.warmup_steps=2",
         "model.proposals.num_queries=12", "model.image_size=64",
         *[f"tasks.{t}.batch_size=2" for t in ("classification", "detection", "instance_segmentation",
                                                "captioning", "retrieval")]]
NOISE = ("Failed to query Ray Train Controller", "core_worker.cc", "deprecated", "Warning", "WARNING", "pid=")


def test_the_console_shows_each_progress_line_once_and_the_run_folder_keeps_the_full_log(embedded_data, tmp_path):
    out = tmp_path / "run"
    # The test session's own Ray settings (tests/conftest.py: every worker line shown) are not a user's.
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env["PYTHONPATH"] = str(ROOT)
    command = [sys.executable, "pipelines/train.py", "--out", str(out), *SMALL, f"data.root={embedded_data}",
               "train.steps=6", "train.log_every=2", "train.checkpoint_every=6"]
    finished = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
    console = [line for line in (finished.stdout + finished.stderr).splitlines() if line.strip()]
    assert finished.returncode == 0, "\n".join(console[-60:])

    assert [line for line, count in Counter(console).items() if count > 1] == []
    for noise in NOISE:
        assert [line for line in console if noise in line] == [], noise
    assert all(line.startswith("[train] ") for line in console), console  # only the run's own lines
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
