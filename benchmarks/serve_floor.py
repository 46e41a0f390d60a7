"""What an image request costs with no model and no app code: Ray Serve's own floor, and plain HTTP's.

    python benchmarks/serve_floor.py [--requests 200] [--compute-ms 16]     # starts a local Ray, 2 CPUs

The same multipart JPEG upload as ``benchmarks/serve_latency.py``'s, from the same client (aiohttp, 1 keep-alive
client), to a FastAPI app that reads the image's bytes and answers their count, served three ways:
- ``ray_serve``: as a Ray Serve deployment (``serve.ingress``, one replica) behind Serve's HTTP proxy, started the
  way the project's app is (``serve.local_run``): the latency no Serve app can go below on this machine;
- ``ray_serve_compute``: the same, its handler first computing for ``compute_ms`` on a thread (torch matmuls, one
  thread, as the model replica computes a batch): Ray Serve's own cost around a request that computes as long as
  the model does — on this machine the computation makes Serve's part of the request slower too;
- ``uvicorn``: by uvicorn in a subprocess, no Ray: HTTP and FastAPI's form parsing alone.
The project's Serve p50 minus ``ray_serve_compute``'s, with ``compute_ms`` = its replica's model time, is what the
app adds beyond Ray Serve itself (``benchmarks/serve_batching.py``).
"""

# No ``from __future__ import annotations``: FastAPI resolves the route annotations of a deployment class that Ray
# ships by value, where string annotations no longer resolve.
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


def busy_compute(seconds: float) -> None:
    """torch matmuls on one thread for ``seconds`` (a stand-in for a model batch)."""
    import torch

    torch.set_num_threads(1)
    block, started = torch.randn(256, 256), time.perf_counter()
    while time.perf_counter() - started < seconds:
        block = torch.tanh(block @ block)


def ray_serve_floor(images: list[bytes], requests: int, compute_ms: float = 0.0) -> dict:
    """1 client through Ray Serve to the echo deployment, its handler computing ``compute_ms`` on a thread first
    (Ray running, Serve not started)."""
    from ray import serve

    from benchmarks.serve_latency import drive
    from serve.local_run import run_local, stop_local

    app = echo_app()

    @serve.deployment(ray_actor_options={"num_cpus": 1 if compute_ms else 0.25})
    @serve.ingress(app)
    class Echo:
        @app.post("/compute")
        async def compute(self, image: UploadFile = File(...)) -> dict:
            data = await image.read()
            await asyncio.get_running_loop().run_in_executor(None, busy_compute, compute_ms / 1000)
            return {"bytes": len(data)}

    url = run_local(Echo.bind(), name="floor")
    route = "/compute" if compute_ms else ROUTE
    try:
        asyncio.run(drive(url, images, 1, 16, route))  # warm the connection and code paths
        return asyncio.run(drive(url, images, 1, requests, route))
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


def floors(images: list[bytes], requests: int, compute_ms: float) -> dict:
    """{"ray_serve", "ray_serve_compute", "uvicorn": summary (p50_ms, p99_ms, rps, n)}; "compute_ms"."""
    return {"ray_serve": ray_serve_floor(images, requests),
            "ray_serve_compute": ray_serve_floor(images, requests, compute_ms),
            "uvicorn": uvicorn_floor(images, requests), "compute_ms": compute_ms}


def main(argv: list[str] | None = None) -> None:
    import ray

    from benchmarks.serve_latency import test_images
    from pipelines.run import ray_runtime

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--compute-ms", type=float, default=16.0, help="the computing handler's time per request")
    args = parser.parse_args(argv)
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False,
             runtime_env={"env_vars": dict(ray_runtime.RAY_ENVIRONMENT)})
    try:
        started = time.time()
        result = floors(test_images(), args.requests, args.compute_ms)
    finally:
        ray.shutdown()
    for name, row in result.items():
        if name == "compute_ms":
            continue
        print(f"{name}: p50 {row['p50_ms']:.2f} ms, p99 {row['p99_ms']:.2f} ms, {row['rps']:.0f} req/s")
    print(f"({time.time() - started:.0f} s)")


if __name__ == "__main__":
    main()
