"""A local Ray (no dashboard) points its processes' State API at an address where nothing listens: Ray's default
would be the dashboard port of whatever other Ray runs on the machine, and Train's placement-group cleaner,
told by that Ray that the run's controller does not exist, removes the running workers' group."""

from __future__ import annotations

import os

import pytest

from pipelines.run.ray_runtime import NO_STATE_API, spawning_local_ray


def test_the_local_rays_processes_ask_no_other_rays_dashboard(ray_local):
    @ray_local.remote
    def state_api_answer() -> tuple[str | None, str]:
        from ray.util.state import get_actor
        from ray.util.state.exception import RayStateApiException

        try:
            get_actor("ab" * 16, timeout=5)
        except RayStateApiException:  # the cleaner's "try again later", never "the controller is gone"
            return os.environ.get("RAY_API_SERVER_ADDRESS"), "unavailable"
        return os.environ.get("RAY_API_SERVER_ADDRESS"), "answered"

    assert ray_local.get(state_api_answer.remote()) == (NO_STATE_API["RAY_API_SERVER_ADDRESS"], "unavailable")
    assert "RAY_API_SERVER_ADDRESS" not in os.environ  # only the spawned processes have it


def test_the_drivers_environment_is_restored_even_when_the_start_fails(monkeypatch):
    monkeypatch.setenv("RAY_API_SERVER_ADDRESS", "http://head:8265")
    with pytest.raises(RuntimeError):
        with spawning_local_ray():
            assert os.environ["RAY_API_SERVER_ADDRESS"] == NO_STATE_API["RAY_API_SERVER_ADDRESS"]
            raise RuntimeError("ray.init failed")
    assert os.environ["RAY_API_SERVER_ADDRESS"] == "http://head:8265"
