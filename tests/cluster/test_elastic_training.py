"""Elastic training (``scale.min_workers``) on a simulated cluster, run in a subprocess like the two-node
test (tests/cluster/elastic_run.py): one worker while only one fits, two after a node joins and the run
is resumed; the learning rate follows the worker count and no row is read twice or skipped."""

import json
import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).with_name("elastic_run.py")
ROOT = Path(__file__).resolve().parents[2]


def streams_read(runs: list[tuple[dict, int, int]]) -> dict[str, list[int]]:
    """Per task, the image ids read in stream order, from (reads per rank, first step, end step) parts:
    at one step, item j of rank r lies at stream position (…+ j)·W + r, so items interleave rank-fastest."""
    out: dict[str, list[int]] = {}
    for reads, first, end in runs:
        ranks = [reads[name] for name in sorted(reads)]
        for per_rank in zip(*[[r for r in rank if first <= r[0] < end] for rank in ranks]):
            task = per_rank[0][1]
            assert all(r[1] == task for r in per_rank)  # unmixed on every worker
            for j in range(len(per_rank[0][2])):
                out.setdefault(task, []).extend(r[2][j] for r in per_rank)
    return out


def test_an_elastic_run_grows_from_one_to_two_workers_without_rereading_rows(embedded_data, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    done = subprocess.run([sys.executable, str(SCRIPT), "--data", str(embedded_data), "--work", str(tmp_path)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert done.returncode == 0 and lines, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads(lines[-1][len("RESULT "):])
    first, second = result["first"], result["second"]
    logs = done.stdout + done.stderr

    # One node: the elastic run started with the one worker that fits, at half the peak learning rate.
    assert "test-only failure injected at step 3" in first["error"]
    assert list(first["trace"]) == ["rank0"] and first["trace"]["rank0"] == [0, 1, 2]
    assert "1 of 2 workers: peak lr 0.0001 (linear rule)" in logs
    # A second node joined; the same command resumed from the one-worker checkpoint with two workers.
    assert second["error"] is None and second["step"] == 6
    assert second["trace"] == {"rank0": [2, 3, 4, 5], "rank1": [2, 3, 4, 5]}
    final = result["final_state"]
    assert final["world_size"] == 2 and [h["workers"] for h in final["history"]] == [1, 2, 2]

    # Every task's stream continues where the one-worker run checkpointed it: no row twice, none skipped.
    read = streams_read([(first["reads"], 0, 2), (second["reads"], 2, 6)])
    assert read
    for task, ids in read.items():
        assert ids == result["expected"][task][:len(ids)], task
    assert sum(final["stream_anchor"]["positions"].values()) == sum(len(ids) for ids in read.values())
