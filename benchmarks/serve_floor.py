"""What an image request costs with no model and no app code: Ray Serve's own floor, and plain HTTP's.

    python benchmarks/serve_floor.py [--requests 200]        # starts a local Ray, 2 CPUs

The same multipart JPEG upload as ``benchmarks/serve_latency.py``'s, from the same client (aiohttp, 1 keep-alive
client), to a FastAPI app that reads the image's bytes and answers their count, served two ways:
- ``ray_serve``: as a Ray Serve deployment (``serve.ingress``, one replica) behind Serve's HTTP proxy, started the
  way the project's app is (``serve.local_run``): the latency no Serve app can go below on this machine;
- ``uvicorn``: by uvicorn in a subprocess, no Ray: HTTP and FastAPI's form parsing alone.
Their difference is Ray Serve's proxy → replica path; the project's ``serve_overhead_ms`` minus the first is what
the app adds beyond Ray Serve itself.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

from fastapi import FastAPI, File, UploadFile

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

ROUTE = "/echo"


def echo_app():
    """FastAPI: POST /echo (multipart ``image``) → {"bytes": n}; GET /readyz."""
    app = FastAPI()

    @app.post(ROUTE)
    async def echo(image: UploadFile = File(...)) -> dict:
        return {"bytes": len(await image.read())}

    @app.get("/readyz")
    async def ready() -> dict:
        return {"ready": True}

    return app


def ray_serve_floor(images: list[bytes], requests: int) -> dict:
    """1 client through Ray Serve to the echo deployment (Ray running, Serve not started)."""
    from ray import serve

    from benchmarks.serve_latency import drive
    from serve.local_run import run_local, stop_local

    @serve.deployment(ray_actor_options={"num_cpus": 0.25})
    @serve.ingress(echo_app())
    class Echo:
        pass

    url = run_local(Echo.bind(), name="floor")
    try:
        asyncio.run(drive(url, images, 1, 16, ROUTE))  # warm the connection and code paths
        return asyncio.run(drive(url, images, 1, requests, ROUTE))
    finally:
        stop_local()


def uvicorn_floor(images: list[bytes], requests: int) -> dict:
    """1 client to the echo app served by uvicorn in a subprocess (no Ray)."""
    from benchmarks.serve_latency import drive
    from serve.local_run import free_port, wait_ready

    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "benchmarks.serve_floor:echo_app", "--factory", "--host", "127.0.0.1",
         "--port", str(port), "--log-level", "warning", "--no-access-log"], cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)})
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, timeout_s=60)
        asyncio.run(drive(url, images, 1, 16, ROUTE))
        return asyncio.run(drive(url, images, 1, requests, ROUTE))
    finally:
        server.terminate()
        server.wait(timeout=30)


def floors(images: list[bytes], requests: int) -> dict:
    """{"ray_serve": summary, "uvicorn": summary} (p50_ms, p99_ms, rps, n)."""
    return {"ray_serve": ray_serve_floor(images, requests), "uvicorn": uvicorn_floor(images, requests)}


def main(argv: list[str] | None = None) -> None:
    import ray

    from benchmarks.serve_latency import test_images
    from pipelines import ray_runtime

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=200)
    args = parser.parse_args(argv)
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False,
             runtime_env={"env_vars": dict(ray_runtime.RAY_ENVIRONMENT)})
    try:
        started = time.time()
        result = floors(test_images(), args.requests)
    finally:
        ray.shutdown()
    for name, row in result.items():
        print(f"{name}: p50 {row['p50_ms']:.2f} ms, p99 {row['p99_ms']:.2f} ms, {row['rps']:.0f} req/s")
    print(f"({time.time() - started:.0f} s)")


if __name__ == "__main__":
    main()
