"""Starting or joining Ray the same way from every entry point."""

from __future__ import annotations

import os

# Measured on small machines (../shared/RAY_NOTES.md): keep listeners on loopback for a local Ray, no
# usage stats, and Train's report() not blocking ~2 s on its health check. Read when Ray starts.
RAY_ENVIRONMENT = {
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.1",
    "HF_HUB_OFFLINE": "1",
}
for _key, _value in RAY_ENVIRONMENT.items():
    os.environ.setdefault(_key, _value)

import ray  # noqa: E402


def connect(address: str | None = None) -> None:
    """Join ``address`` (or RAY_ADDRESS) if given, else start a local Ray; no-op when already connected."""
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    # "local" starts a fresh Ray even if another one runs on this machine (never join one by accident).
    ray.init(address=address or "local", include_dashboard=False if address is None else None,
             runtime_env={"env_vars": {k: os.environ[k] for k in RAY_ENVIRONMENT}})


def cluster_has_gpus() -> bool:
    return ray.cluster_resources().get("GPU", 0) > 0
