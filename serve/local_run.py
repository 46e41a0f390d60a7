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

from ray import serve
from ray.serve import Application


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_local(app: Application, *, name: str = "unip2", port: int | None = None,
              ready_timeout_s: float = 180.0) -> str:
    """Start Serve on 127.0.0.1 (a free port unless given), deploy ``app`` at ``/``, wait for ``/readyz``.

    Returns the base URL. Serve must not already be running (its HTTP options would be ignored).
    """
    port = port or free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(app, name=name, route_prefix="/", blocking=False)
    base_url = f"http://127.0.0.1:{port}"
    wait_ready(base_url, ready_timeout_s)
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


def stop_local() -> None:
    """Shut Serve down (every app, the proxy and the controller), giving the CPUs back."""
    serve.shutdown()
