"""Elastic training on a simulated cluster: an elastic run (``scale.min_workers=1``, ``num_workers=2``)
starts with the one worker that fits, dies, a second node joins, and the same command resumes with two
workers from the one-worker checkpoint — every task's data stream continuing where it stopped.

    python tests/cluster/elastic_run.py --data <converted data folder> --work <empty folder>

Run as its own process (tests/cluster/test_elastic_training.py does); prints ``RESULT {json}``.
Node sizes as in multinode_run.py: 3 logical CPUs, a worker takes 1.75 and its loader 0.25, so one node
holds exactly one worker.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from multinode_run import NODE_CPUS, NODE_MEMORY, OVERRIDES, parse_args, train_once

from pipelines.run import ray_runtime  # noqa: E402  (sets Ray's environment before ray is imported)
import ray  # noqa: E402
from ray.cluster_utils import Cluster  # noqa: E402

from pipelines.run.prepare import prepare_run  # noqa: E402
from pipelines.data.stream_spec import StreamSpec  # noqa: E402
from unip2.data.row_reader import RowReader  # noqa: E402
from unip2.tasks import TASKS  # noqa: E402

ELASTIC = OVERRIDES + ["scale.min_workers=1"]
FAIL_STEP = 3  # the one-worker run dies entering step 3; its last checkpoint holds step 2
COORDINATOR_REFRESH_S = 25.0


def expected_streams(data: Path, work: Path) -> dict[str, list[int]]:
    """Per task, the image ids of the first 100 stream positions (what any run reads, in order)."""
    run, _, root = prepare_run(None, ELASTIC + [f"data.root={data}"], out=str(work / "plan_only"))
    plan = StreamSpec.of(run, root).plan()
    streams = {}
    for task in run.tasks:
        reader = RowReader(root, TASKS[task].dataset, "train", columns=["image_id"])
        rows = plan.permutation(task, 0)[:100]
        streams[task] = [int(i) for i in reader.read(rows)["image_id"]]
    return streams


def main() -> int:
    args = parse_args()
    work = Path(args.work).resolve()
    storage, out = work / "shared_storage", work / "run"
    data = Path(args.data)

    started = time.time()
    os.environ.update(ray_runtime.NO_STATE_API)  # the simulated nodes' processes ask no other Ray's dashboard
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": NODE_CPUS, "resources": {"node_a": 1}, "include_dashboard": False, **NODE_MEMORY})
    cluster.wait_for_nodes()
    os.environ["RAY_ADDRESS"] = cluster.address
    result: dict = {"expected": expected_streams(data, work)}
    try:
        result["first"] = train_once(data, out, storage, work / "trace1", fail_at_step=FAIL_STEP,
                                     fail_marker=work / "fired", overrides=ELASTIC)
        cluster.add_node(num_cpus=NODE_CPUS, resources={"node_b": 1}, **NODE_MEMORY)
        cluster.wait_for_nodes()
        # Train's elastic policy sizes the group from Ray Data's autoscaling coordinator, whose view of
        # the cluster refreshes every 20 s (DefaultAutoscalingCoordinator.TICK_INTERVAL_S in Ray 2.60).
        time.sleep(COORDINATOR_REFRESH_S)
        result["second"] = train_once(data, out, storage, work / "trace2", overrides=ELASTIC)
    finally:
        ray.shutdown()
        cluster.shutdown()
    state = json.loads((out / "last_checkpoint" / "train_state.json").read_text())
    result["final_state"] = {k: state.get(k) for k in ("step", "world_size", "stream_anchor", "history")}
    result["total_s"] = round(time.time() - started, 1)
    print("RESULT " + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
