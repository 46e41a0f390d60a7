"""Sizing a run for the cluster at hand: ``scale.num_workers: auto``, and a start the cluster cannot hold refused.

    resolve_worker_count(run, ray_runtime.cluster_resources())   # auto → the cluster's GPUs, else its CPU slots
    ensure_cluster_fits(run, use_gpu=...)                        # before TorchTrainer.fit(): raises ClusterTooSmall

Ray Train asks for its workers and waits for them without a word, forever when they never come (64 GPU workers on
an 8-GPU cluster). So before a TorchTrainer starts, the resources its workers and their data loaders reserve are
compared with the cluster's total (free or not: another job's share frees up, a missing GPU does not); when short,
the start waits ``scale.resources_wait_s`` for the cluster to grow (an autoscaler adding nodes), then is refused
naming what it asked and what is there.
"""

from __future__ import annotations

import math
import time

from pipelines.run import ray_runtime  # (first: sets Ray's environment before ray is imported)
from unip2.config_io import ConfigError
from unip2.run_config import RunConfig

POLL_S = 1.0


class ClusterTooSmall(ConfigError):
    """The cluster cannot hold the run's workers; the message names the resources asked and present."""


def loader_cpus_per_worker(run: RunConfig) -> float:
    """CPUs the Ray Data decode/augment actors of one training worker's stream reserve."""
    return run.data.loader_concurrency * run.data.loader_cpus


def worker_resources(run: RunConfig, *, use_gpu: bool) -> dict[str, float]:
    """Ray Train's ``resources_per_worker``."""
    return {"CPU": run.scale.cpus_per_worker, **({"GPU": 1} if use_gpu else {})}


def auto_worker_count(run: RunConfig, cluster: dict[str, float]) -> int:
    """``scale.num_workers: auto`` on a cluster with ``cluster`` resources: every GPU when the run trains on GPUs,
    else the CPU slots (a worker with its data loaders per slot); at least 1."""
    gpus = int(cluster.get("GPU", 0))
    use_gpu = gpus > 0 if run.scale.use_gpu is None else run.scale.use_gpu
    if use_gpu:
        return max(1, gpus)
    slot = run.scale.cpus_per_worker + loader_cpus_per_worker(run)
    return max(1, math.floor(cluster.get("CPU", 0) / slot + 1e-9))


def resolve_worker_count(run: RunConfig, cluster: dict[str, float]) -> None:
    """Replace ``scale.num_workers: auto`` by its number for ``cluster`` (in place, once, before the run's config
    is saved: a resumed run keeps the number); prints one line. An elastic run keeps at least ``min_workers``."""
    if run.scale.num_workers != "auto":
        return
    count = max(auto_worker_count(run, cluster), run.scale.min_workers or 1)
    gpus = int(cluster.get("GPU", 0))
    if (gpus > 0 if run.scale.use_gpu is None else run.scale.use_gpu):
        source = f"the cluster's {gpus} GPUs"
    else:
        slot = run.scale.cpus_per_worker + loader_cpus_per_worker(run)
        source = (f"CPU slots: {cluster.get('CPU', 0):g} CPUs / {slot:g} per worker with its data loaders "
                  f"(cpus_per_worker + loader_concurrency × loader_cpus)")
    run.scale.num_workers = count
    print(f"[train] scale.num_workers: auto → {count} ({source})", flush=True)


def needed_resources(run: RunConfig, *, use_gpu: bool) -> dict[str, float]:
    """What the run's workers (``min_workers`` of an elastic run) and their data loaders reserve together."""
    workers = run.scale.min_workers or run.scale.num_workers
    needed = {"CPU": workers * (run.scale.cpus_per_worker + loader_cpus_per_worker(run))}
    if use_gpu:
        needed["GPU"] = float(workers)
    return needed


def shortfall(needed: dict[str, float], cluster: dict[str, float]) -> dict[str, float]:
    """The resources of ``needed`` that ``cluster`` has less of than needed."""
    return {name: amount for name, amount in needed.items() if cluster.get(name, 0.0) + 1e-9 < amount}


def ensure_cluster_fits(run: RunConfig, *, use_gpu: bool) -> None:
    """Return once the connected cluster's total resources hold the run's workers; after
    ``scale.resources_wait_s`` without them, raise ClusterTooSmall naming the resources asked and present."""
    needed = needed_resources(run, use_gpu=use_gpu)
    deadline = time.monotonic() + run.scale.resources_wait_s
    cluster = ray_runtime.cluster_resources()
    announced = False
    while shortfall(needed, cluster):
        if time.monotonic() >= deadline:
            raise ClusterTooSmall(*refusal(run, needed, cluster, use_gpu=use_gpu))
        if not announced:
            print(f"[train] waiting up to {run.scale.resources_wait_s:g} s for the cluster to hold "
                  f"{_amounts(needed)} (it has {_amounts(cluster, needed)})", flush=True)
            announced = True
        time.sleep(min(POLL_S, max(deadline - time.monotonic(), 0.0)))
        cluster = ray_runtime.cluster_resources()


def refusal(run: RunConfig, needed: dict[str, float], cluster: dict[str, float], *,
            use_gpu: bool) -> tuple[str, str]:
    """(field, message) of a start the cluster cannot hold."""
    elastic = run.scale.min_workers is not None
    field = "scale.min_workers" if elastic else "scale.num_workers"
    workers = run.scale.min_workers or run.scale.num_workers
    per_worker = ", ".join(f"{k}: {v:g}" for k, v in worker_resources(run, use_gpu=use_gpu).items())
    message = (f"{workers} workers × {{{per_worker}}} + their data loaders ({loader_cpus_per_worker(run):g} CPU "
               f"each) need {_amounts(needed)}; the cluster has {_amounts(cluster, needed)} "
               f"(waited {run.scale.resources_wait_s:g} s). Lower {field}, scale.cpus_per_worker or "
               "data.loader_cpus, use scale.num_workers: auto, or add nodes")
    return field, message


def _amounts(resources: dict[str, float], names: dict[str, float] | None = None) -> str:
    """'64 CPU, 64 GPU' for the CPU/GPU of ``resources`` (those named in ``names``, 0 when absent)."""
    shown = names if names is not None else resources
    return ", ".join(f"{resources.get(name, 0.0):g} {name}" for name in ("CPU", "GPU") if name in shown)
