"""Load on the Serve app: N concurrent clients over every image route of the task registry for a bounded time.

    python benchmarks/serve_load.py                                  # untrained tiny model, 16 clients, 20 s
    python benchmarks/serve_load.py --clients 32 --seconds 30 --replicas 2 --model-cpus 0.5
    python benchmarks/serve_load.py --checkpoint runs/tiny/model --max-requests 2000

Starts a local Ray (``--cpus``, 2 by default) and the app on a loopback port; each client (aiohttp, keep-alive,
one event loop) sends the routes in turn, starting at a different one, with the route's required fields filled
(texts to rank, a query) and one image (two for a route taking many), until ``--seconds`` have passed or
``--max-requests`` were sent. Reports requests/s, p50 / p99 latency and the status-code counts, per route and in
all, and which replicas answered (``X-Replica``). Loopback only; bounded in count and time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
import typing
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

TEXTS = ["a red circle", "two blue squares", "a green star"]


def image_routes() -> list:
    """Every route of the registry that takes an image (one or many), in registry order."""
    from unip2.tasks import TASKS

    return [route for task in TASKS.values() for route in task.routes if route.images != "none"]


def form_fields(route) -> dict[str, str]:
    """Multipart text fields for ``route``: each required field filled (lists as JSON strings)."""
    from serve.request_models import params_model

    fields = {}
    for name, info in params_model(route).model_fields.items():
        if info.is_required():
            fields[name] = json.dumps(TEXTS) if typing.get_origin(info.annotation) is list else TEXTS[0]
    return fields


async def load(url: str, images: list[bytes], *, clients: int, seconds: float, max_requests: int) -> dict:
    """Drive every image route for ``seconds`` (or ``max_requests`` in all) → per-route and total figures."""
    import aiohttp

    routes = image_routes()
    records: list[tuple[str, int, float, str | None]] = []
    deadline = time.perf_counter() + seconds
    sent = 0

    async def client(session, index: int):
        nonlocal sent
        turn = index
        while time.perf_counter() < deadline and sent < max_requests:
            sent += 1
            route = routes[turn % len(routes)]
            turn += 1
            form = aiohttp.FormData()
            name = "images" if route.images == "many" else "image"
            for k in range(2 if route.images == "many" else 1):
                form.add_field(name, images[(turn + k) % len(images)], filename="image.jpg",
                               content_type="image/jpeg")
            for key, value in form_fields(route).items():
                form.add_field(key, value)
            t0 = time.perf_counter()
            try:
                async with session.post(url + route.path, data=form) as response:
                    await response.read()
                    status, replica = response.status, response.headers.get("x-replica")
            except aiohttp.ClientError:
                status, replica = 0, None  # the connection failed: counted as status 0
            records.append((route.path, status, time.perf_counter() - t0, replica))

    timeout = aiohttp.ClientTimeout(total=seconds + 120)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=clients), timeout=timeout) as session:
        start = time.perf_counter()
        await asyncio.gather(*(client(session, i) for i in range(clients)))
        wall = time.perf_counter() - start
    per_route = {route.path: summarize([r for r in records if r[0] == route.path], wall) for route in routes}
    return {"clients": clients, "seconds": wall, "total": summarize(records, wall), "routes": per_route,
            "replicas": dict(Counter(r[3] for r in records if r[3]))}


def summarize(records: list, wall_s: float) -> dict:
    latencies = np.asarray([r[2] for r in records]) * 1000 if records else np.zeros(1)
    return {"requests": len(records), "rps": len(records) / wall_s,
            "p50_ms": float(np.percentile(latencies, 50)), "p99_ms": float(np.percentile(latencies, 99)),
            "status": {str(code): count for code, count in sorted(Counter(r[1] for r in records).items())}}


def run(checkpoint: str, *, clients: int = 16, seconds: float = 20.0, max_requests: int = 5000, replicas: int = 1,
        model_cpus: float = 1.0, threads: int = 1, max_batch_size: int = 16) -> dict:
    """Ray must be running and Serve not started: start the app, load it, stop it → ``load``'s figures."""
    from benchmarks import serve_latency
    from serve.app import AppArgs, build_app
    from serve.local_run import run_local, stop_local

    args = AppArgs(checkpoint=checkpoint, min_replicas=replicas, model_num_cpus=model_cpus, ingress_num_cpus=0.25,
                   torch_threads=threads, max_batch_size=max_batch_size)
    url = run_local(build_app(args), name="load")
    try:
        images = serve_latency.test_images()
        asyncio.run(load(url, images, clients=min(clients, 4), seconds=2.0, max_requests=24))  # warm connections
        load_average = os.getloadavg()
        figures = asyncio.run(load(url, images, clients=clients, seconds=seconds, max_requests=max_requests))
    finally:
        stop_local()
    return {**figures, "replicas_started": replicas, "model_cpus": model_cpus, "torch_threads": threads,
            "max_batch_size": max_batch_size, "load_average": [round(v, 2) for v in load_average]}


def markdown(figures: dict) -> str:
    lines = ["| route | requests | req/s | p50 ms | p99 ms | status codes |", "|---|---|---|---|---|---|"]
    for name, row in [*figures["routes"].items(), ("all", figures["total"])]:
        codes = ", ".join(f"{code}: {count}" for code, count in row["status"].items())
        lines.append(f"| {name} | {row['requests']} | {row['rps']:.1f} | {row['p50_ms']:.0f} | {row['p99_ms']:.0f} | "
                     f"{codes} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", help="model folder (default: an untrained tiny model)")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=20.0, help="how long the load lasts")
    parser.add_argument("--max-requests", type=int, default=5000, help="most requests sent in all")
    parser.add_argument("--replicas", type=int, default=1)
    parser.add_argument("--model-cpus", type=float, default=1.0, help="CPUs per replica for the model")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per replica")
    parser.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray")
    args = parser.parse_args(argv)

    from pipelines.run import ray_runtime

    import ray

    from benchmarks import serve_latency

    with tempfile.TemporaryDirectory() as scratch:
        checkpoint = args.checkpoint or serve_latency.tiny_checkpoint(Path(scratch))
        ray.init(address="local", num_cpus=args.cpus, include_dashboard=False, log_to_driver=False,
                 configure_logging=False, runtime_env={"env_vars": dict(ray_runtime.RAY_ENVIRONMENT)})
        try:
            figures = run(checkpoint, clients=args.clients, seconds=args.seconds, max_requests=args.max_requests,
                          replicas=args.replicas, model_cpus=args.model_cpus, threads=args.threads)
        finally:
            ray.shutdown()
    print(f"\n{figures['clients']} clients for {figures['seconds']:.1f} s, {args.replicas} replica(s) × "
          f"{args.model_cpus:g} model CPU, load average {figures['load_average']}; answered by "
          f"{len(figures['replicas'])} replica(s)")
    print(markdown(figures))


if __name__ == "__main__":
    main()
