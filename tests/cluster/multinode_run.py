"""A two-node Ray cluster on one machine: a short training whose two workers land on different nodes,
checkpoints in shared storage, a run that dies, then the same command again, which resumes.

    python tests/cluster/multinode_run.py --data <converted data folder> --work <empty folder>

Run as its own process (tests/cluster/test_multinode_training.py does), never inside the pytest process:
the rest of the suite shares one local Ray, and a second cluster in the same process would clash with it.
Prints one line ``RESULT {json}`` with what the checks need.

Node sizes: ``ray.data.from_numpy`` in ``pipelines/data/step_stream.py`` runs one 1-CPU task per step block,
so each node keeps 1 logical CPU free for them (with no free CPU the stream waits forever). Each node has
3 logical CPUs; a worker takes 1.75 and its loader 0.25, so two workers cannot share a node and the
placement group puts one on each. Logical CPUs only: the work is the same as with 1-CPU nodes.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: the loop hooks

from pipelines.run import ray_runtime  # noqa: E402  (sets Ray's environment before ray is imported)
import ray  # noqa: E402
from ray.cluster_utils import Cluster  # noqa: E402

from pipelines.run.prepare import prepare_run  # noqa: E402
from pipelines.training.trainer import fit  # noqa: E402
from loop_hooks import FaultHooks  # noqa: E402

NODE_CPUS = 3
NODE_MEMORY = {"object_store_memory": 200 * 1024 * 1024}
OVERRIDES = ["pretrain.encoders=[]", "scale.num_workers=2", "scale.cpus_per_worker=1.75", "data.loader_cpus=0.25",
             "scale.max_failures=0", "train.steps=6", "train.checkpoint_every=2", "train.log_every=2",
             "optim.warmup_steps=2", "model.proposals.num_queries=12", "model.image_size=64",
             "tasks={classification: {batch_size: 2}, captioning: {batch_size: 2}}"]
FAIL_STEP = 3  # the first run dies entering step 3; its last checkpoint holds step 2


class PlacementWatcher(threading.Thread):
    """Polls the GCS placement-group table while ``fit`` runs and keeps, for every two-bundle group that
    appears, bundle index → node id (the training worker group: worker i runs in bundle i)."""

    def __init__(self):
        super().__init__(daemon=True)
        self.known = set(ray.util.placement_group_table())
        self.groups: dict[str, dict[int, str]] = {}
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            for group_id, info in ray.util.placement_group_table().items():
                placed = info.get("bundles_to_node_id") or {}
                if group_id not in self.known and len(info.get("bundles", {})) == 2 and len(placed) == 2:
                    self.groups[group_id] = {int(k): v for k, v in placed.items()}
            self.done.wait(0.2)


def train_once(data: Path, out: Path, storage: Path, trace: Path, *, fail_at_step: int | None = None,
               fail_marker: Path | None = None, overrides: list[str] = OVERRIDES) -> dict:
    """``pipelines/train.py``'s two calls (prepare_run, fit) with RAY_ADDRESS set; never raises.

    The trace holds, per rank, the steps in order and, per step, the task and the image ids read."""
    trace.mkdir(parents=True)
    hooks = FaultHooks(fail_at_step=fail_at_step, fail_marker=fail_marker, trace_dir=trace)
    started = time.time()
    run, out_dir, root = prepare_run(None, overrides + [f"data.root={data}", f"scale.storage_path={storage}"],
                                     out=str(out))
    watcher = PlacementWatcher()
    watcher.start()
    error, step = None, None
    try:
        step = json.loads((fit(run, out=out_dir, data_root=root, hooks=hooks) / "train_state.json").read_text())["step"]
    except Exception as err:  # the injected failure surfaces here (max_failures=0)
        error = f"{type(err).__name__}: {err}"[-2000:]
    watcher.done.set()
    watcher.join()
    reads = {p.stem: [[int(step), task, [int(i) for i in ids]]
                      for step, task, *ids in (line.split() for line in p.read_text().splitlines())]
             for p in sorted(trace.glob("rank*.txt"))}
    return {"seconds": round(time.time() - started, 1), "error": error, "step": step,
            "placements": list(watcher.groups.values()),
            "checkpoints": sorted(p.name for p in (storage / out.name).glob("checkpoint_*")),
            "trace": {rank: [step for step, _, _ in lines] for rank, lines in reads.items()}, "reads": reads}


def parse_args() -> argparse.Namespace:
    """``--data`` (converted data folder) and ``--work`` (empty folder), shared with elastic_run.py."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", required=True, help="converted data folder (holds manifest.json)")
    parser.add_argument("--work", required=True, help="empty folder for the run, its storage and traces")
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    work = Path(args.work).resolve()
    storage, out = work / "shared_storage", work / "run"

    started = time.time()
    os.environ.update(ray_runtime.NO_STATE_API)  # the simulated nodes' processes ask no other Ray's dashboard
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": NODE_CPUS, "resources": {"node_a": 1}, "include_dashboard": False, **NODE_MEMORY})
    second = cluster.add_node(num_cpus=NODE_CPUS, resources={"node_b": 1}, **NODE_MEMORY)
    cluster.wait_for_nodes()
    result: dict = {"cluster_start_s": round(time.time() - started, 1),
                    "nodes": {"node_a": cluster.head_node.node_id, "node_b": second.node_id}}
    os.environ["RAY_ADDRESS"] = cluster.address  # how train.py joins a cluster (pipelines/run/ray_runtime.py)
    try:
        result["first"] = train_once(Path(args.data), out, storage, work / "trace1", fail_at_step=FAIL_STEP,
                                     fail_marker=work / "fired")
        result["joined"] = ray.get_runtime_context().gcs_address == cluster.address
        result["second"] = train_once(Path(args.data), out, storage, work / "trace2")
    finally:
        ray.shutdown()
        cluster.shutdown()
    result["total_s"] = round(time.time() - started, 1)
    print("RESULT " + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
