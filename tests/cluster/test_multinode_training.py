"""Training on a two-node Ray cluster (two raylets on this machine, ``ray.cluster_utils.Cluster``), joined
through RAY_ADDRESS as ``pipelines/train.py`` does: one worker per node, checkpoints in the shared storage
path, and after the run dies, the same command resumes from its last checkpoint (Ray Train V2 restores
the run from ``checkpoint_manager_snapshot.json`` under ``<storage_path>/<run name>``).

The cluster lives in a subprocess (tests/cluster/multinode_run.py): the rest of the suite shares one
local Ray in this process, which a second cluster here would clash with."""

import json
import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).with_name("multinode_run.py")
ROOT = Path(__file__).resolve().parents[2]


def test_two_nodes_one_worker_each_then_a_rerun_resumes(embedded_data, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    done = subprocess.run([sys.executable, str(SCRIPT), "--data", str(embedded_data), "--work", str(tmp_path)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=420)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert done.returncode == 0 and lines, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads(lines[-1][len("RESULT "):])
    nodes = set(result["nodes"].values())
    assert len(nodes) == 2 and result["joined"]

    first, second = result["first"], result["second"]
    for run in (first, second):  # one worker on each node
        assert run["placements"], run
        for placement in run["placements"]:
            assert set(placement.values()) == nodes, placement

    # The first run died entering step 3 (max_failures=0); its step-2 checkpoint is in the shared storage.
    assert first["step"] is None and "test-only failure injected at step 3" in first["error"]
    assert first["checkpoints"] == ["checkpoint_0000002", "checkpoint_manager_snapshot.json"]
    assert all(steps[:3] == [0, 1, 2] for steps in first["trace"].values()) and len(first["trace"]) == 2

    # The same command again: Train restores the run, get_checkpoint() hands over step 2, steps 2..5 run.
    storage = tmp_path / "shared_storage" / "run"
    assert f"resumed at step 2 from {storage / 'checkpoint_0000002'}" in done.stdout + done.stderr
    assert second["error"] is None and second["step"] == 6
    assert second["trace"] == {"rank0": [2, 3, 4, 5], "rank1": [2, 3, 4, 5]}
    assert second["checkpoints"] == ["checkpoint_0000004", "checkpoint_0000006", "checkpoint_manager_snapshot.json"]
    state = json.loads((tmp_path / "run" / "last_checkpoint" / "train_state.json").read_text())
    assert state["step"] == 6 and [h["step"] for h in state["history"]] == [2, 4, 6]
