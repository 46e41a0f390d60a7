"""Starting or joining Ray the same way from every entry point, with a quiet console.

    from pipelines.run import ray_runtime           # before anything imports ray: sets Ray's environment
    ray_runtime.connect(address, log_dir=run_folder / "logs")
    ...
    ray_runtime.disconnect()                    # stops Ray; its session logs are copied into log_dir/ray

The console shows the project's own lines only: the driver's prints and the workers' lines that start with a
project tag (``[train] step ...``, printed by rank 0). Ray forwards every worker's stdout and stderr to the
driver, which prints only the tagged lines (Ray's log filter, ``RAY_DEDUP_LOGS_*`` below); with ``log_dir``,
the driver's own Ray messages below ERROR and native stderr go to ``log_dir/driver.log`` and the local Ray's
session logs (every worker's full output) to ``log_dir/ray/`` (pipelines/run/logs.py). ``RAY_DEDUP_LOGS=0``
in the environment shows every worker line again. A local Ray also runs without the helpers that only feed a
dashboard or a cluster (``LOCAL_ENVIRONMENT``).
"""

from __future__ import annotations

import contextlib
import os

# Measured on small machines (../shared/RAY_NOTES.md): keep listeners on loopback for a local Ray, no
# usage stats. Read when Ray starts; also given to every worker.
RAY_ENVIRONMENT = {
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "RAY_USAGE_STATS_ENABLED": "0",
    # Train's controller polls every worker this often, and a ray.train.report() waits up to this long for
    # the previous report to be taken: Ray's 2 s stalls frequent reports, 0.1 s more than doubles the
    # controller's CPU (docs/benchmarks.md, "Ray's footprint").
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5",
    "HF_HUB_OFFLINE": "1",
    # Train patches print() in its workers to also log each line, and that logger's console handler writes
    # to stderr: Ray forwards both streams, so every progress line reached the console twice.
    "RAY_TRAIN_ENABLE_PRINT_PATCH": "0",
}
# Which forwarded worker lines the driver prints (read by the driver when it imports ray): the project's
# tagged lines, never held back or merged; every other line is skipped (it stays in the worker's log file).
PROJECT_LINES = r"^\[(train|pretrain|model)\] "
CONSOLE_ENVIRONMENT = {
    "RAY_DEDUP_LOGS": "1",
    "RAY_DEDUP_LOGS_ALLOW_REGEX": PROJECT_LINES,
    "RAY_DEDUP_LOGS_SKIP_REGEX": "^",
}
for _key, _value in {**RAY_ENVIRONMENT, **CONSOLE_ENVIRONMENT}.items():
    os.environ.setdefault(_key, _value)
if os.environ["RAY_DEDUP_LOGS"].lower() in ("1", "true"):  # tagged lines only: no "(RayTrainWorker pid=...)"
    os.environ.setdefault("RAY_DISABLE_WORKER_LOG_PREFIX", "1")

# A local Ray (this machine only, no dashboard) has no use for what these feed; set when connect() starts one.
# Each is Ray's own switch, so a value in the environment wins.
LOCAL_ENVIRONMENT = {
    "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",  # an actor polling for node drains, which a local Ray never has
    "RAY_TRAIN_METRICS_ENABLED": "0",  # Train's Prometheus metrics: nothing scrapes them without a dashboard
    "RAY_enable_metrics_collection": "0",  # every Ray process's metrics export to the node's agent, ditto
}

# A local Ray has no dashboard, so nothing answers its State API, and Ray's default address for it is the
# dashboard's default port: another Ray's dashboard on this machine, if one runs there. Train's placement-group
# cleaner asks that address whether the run's controller lives, hears "not found" from the other Ray, and removes
# the running workers' group (seen: a run's workers killed and restarted while a second Ray ran beside it). A
# local Ray's processes get an address where nothing listens: the cleaner then waits, as without any dashboard.
NO_STATE_API = {"RAY_API_SERVER_ADDRESS": "http://127.0.0.1:0"}

import ray  # noqa: E402

from pipelines.run.logs import RunLogs  # noqa: E402

_connection: dict = {}  # what connect() started: {"logs": RunLogs | None, "session_dir": str | None}


@contextlib.contextmanager
def spawning_local_ray():
    """Around ``ray.init`` of a local Ray: its processes (spawned now) inherit ``NO_STATE_API``; this process's
    environment is as before afterwards, so a later connection to a cluster's dashboard is not redirected."""
    saved = {key: os.environ.get(key) for key in NO_STATE_API}
    os.environ.update(NO_STATE_API)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def connect(address: str | None = None, *, log_dir: str | os.PathLike | None = None) -> None:
    """Join ``address`` (or RAY_ADDRESS) if given, else start a local Ray; no-op when already connected.

    ``log_dir``: keep the driver's Ray messages and native stderr there, off the console, and, at
    ``disconnect``, a copy of the local Ray's session logs (see pipelines/run/logs.py).
    """
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address is None:
        for key, value in LOCAL_ENVIRONMENT.items():
            os.environ.setdefault(key, value)
    logs = RunLogs(log_dir) if log_dir is not None else None
    try:
        # "local" starts a fresh Ray even if another one runs on this machine (never join one by accident).
        with spawning_local_ray() if address is None else contextlib.nullcontext():
            context = ray.init(address=address or "local", include_dashboard=False if address is None else None,
                               runtime_env={"env_vars": {k: os.environ[k] for k in RAY_ENVIRONMENT}})
    except BaseException:
        if logs is not None:
            logs.close()
        raise
    _connection.update(logs=logs, session_dir=context["session_dir"] if address is None else None)


def disconnect() -> None:
    """Stop the local Ray (or leave the cluster) that ``connect`` started (or joined); its ``log_dir`` gets
    the session logs. A no-op when ``connect`` found Ray already running."""
    if not _connection:
        return
    ray.shutdown()
    logs = _connection.pop("logs", None)
    if logs is not None:
        logs.close(_connection.get("session_dir"))
    _connection.clear()


def cluster_resources() -> dict[str, float]:
    """The connected cluster's total resources (``{"CPU": 16.0, "GPU": 8.0, ...}``), free or not."""
    return ray.cluster_resources()


def cluster_has_gpus() -> bool:
    return cluster_resources().get("GPU", 0) > 0
