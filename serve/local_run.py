"""Run the app on the local Ray, on a loopback port, and wait until the model answers (tests, benchmarks).

    base_url = run_local(build_app(AppArgs(checkpoint=...)), name="unip2")   # Ray already initialized
    ...
    stop_local()
"""

from __future__ import annotations

import json
import socket
import time
import urllib.error
import urllib.request

import ray
from ray import serve
from ray.serve import Application
from ray.serve.context import _get_global_client

from serve.proxy_errors import PROXY_CALLBACK, PROXY_CALLBACK_ENV

SERVE_NAMESPACE = "serve"
CONTROLLER_NAME = "SERVE_CONTROLLER_ACTOR"  # ray.serve._private.constants.SERVE_CONTROLLER_NAME


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_local(app: Application, *, name: str = "unip2", port: int | None = None,
              ready_timeout_s: float = 180.0) -> str:
    """Start Serve on 127.0.0.1 (a free port unless given), deploy ``app`` at ``/``, wait for ``/readyz``.

    Returns the base URL. Serve must not already be running (its HTTP and controller options would be ignored).
    The controller's environment carries the proxy callback; the proxies it starts inherit it, so a request
    whose replica is lost is answered with our JSON 503 (``serve.proxy_errors``), not a plain-text 500.
    """
    serve.start(http_options={"host": "127.0.0.1", "port": port or free_port()},
                controller_options={"runtime_env": {"env_vars": {PROXY_CALLBACK_ENV: PROXY_CALLBACK}}})
    # A Serve instance still shutting down keeps its own port: ask the controller which one is live.
    base_url = f"http://127.0.0.1:{_get_global_client().http_config.port}"
    try:
        serve.run(app, name=name, route_prefix="/", blocking=False)
        wait_ready(base_url, ready_timeout_s)
    except BaseException:
        stop_local()  # give the CPUs back to whatever runs next
        raise
    return base_url


def wait_ready(base_url: str, timeout_s: float = 180.0) -> dict:
    """Poll ``/readyz`` until it answers 200; returns its body."""
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(base_url + "/readyz", timeout=10) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as err:
            last = f"{err.code} {err.read()[:200]!r}"
        except (urllib.error.URLError, OSError) as err:
            last = str(err)
        time.sleep(0.25)
    raise TimeoutError(f"{base_url}/readyz not ready after {timeout_s:.0f} s (last: {last})")


def stop_local(timeout_s: float = 120.0) -> None:
    """Shut Serve down (every app, the proxy and the controller), giving the CPUs back.

    ``serve.shutdown`` gives the controller 30 s and then returns with it still alive (a loaded machine
    takes longer); wait for it to go, and kill it past ``timeout_s`` so the next ``run_local`` starts
    a fresh Serve."""
    serve.shutdown()
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            controller = ray.get_actor(CONTROLLER_NAME, namespace=SERVE_NAMESPACE)
        except ValueError:
            return
        if time.monotonic() > deadline:
            ray.kill(controller, no_restart=True)
            return
        time.sleep(0.5)
