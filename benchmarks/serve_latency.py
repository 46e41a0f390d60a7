"""Latency and throughput of the Serve app against calling the model in-process.

    python benchmarks/serve_latency.py                                  # untrained tiny model
    python benchmarks/serve_latency.py --checkpoint runs/tiny/model --task detection --requests 200
    python benchmarks/serve_latency.py --settings 16/adaptive 16/0.01 16/0 1/0 --threads 1

Each setting ``BATCH/WAIT`` (max_batch_size / batch_wait_timeout_s, or ``adaptive``: wait only while the
model is busy, at most 50 ms) starts the app on a local Ray (loopback port) and drives the task's image route
(from the registry) with 1 and 16 concurrent keep-alive HTTP clients (aiohttp, one event loop): p50 / p99
latency, requests/s, mean batch size, the CPU time per request of each process (proxy, model replica,
client), and the median of each part of a request: the replica's ``Server-Timing`` parts (``serve.timing``:
admit, parse, decode, queue, model, encode) and ``proxy`` = the client's total − the replica's time. "direct"
rows call preprocess → collate → predict in this process: one image at a time (1 client) and batches of 16
(16 clients). Also measured: /healthz (HTTP + proxy → replica, no model).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402



def image_route(task_name: str) -> str:
    """The path of the task's first route taking one image and no required field (what ``drive`` sends)."""
    from serve.request_models import params_model
    from unip2.tasks import TASKS

    for route in TASKS[task_name].routes:
        if route.images == "one" and not any(f.is_required() for f in params_model(route).model_fields.values()):
            return route.path
    raise ValueError(f"task {task_name!r} has no route taking just an image")


def image_tasks() -> list[str]:
    """The registry's tasks that ``drive`` can send an image alone to."""
    from unip2.tasks import TASKS

    names = []
    for name in TASKS:
        try:
            image_route(name)
            names.append(name)
        except ValueError:
            pass
    return names


def tiny_checkpoint(folder: Path) -> str:
    """An untrained tiny model with the shapes world's class names."""
    import torch

    import unip2
    from unip2.data.shapes import CATEGORIES

    config = unip2.preset("tiny")
    names = [c.name for c in CATEGORIES]
    config.class_names = {"imagenet": names, "coco": names}
    torch.manual_seed(0)
    return str(unip2.save(unip2.build_model(config), folder / "model"))


def test_images(count: int = 8) -> list[bytes]:
    rng = np.random.default_rng(0)
    images = []
    for _ in range(count):
        image = Image.new("RGB", (160, 120), tuple(int(v) for v in rng.integers(0, 256, 3)))
        x, y = (int(v) for v in rng.integers(0, 80, 2))
        ImageDraw.Draw(image).ellipse((x, y, x + 40, y + 30), fill=(200, 40, 40))
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=90)
        images.append(buffer.getvalue())
    return images


def summary(latencies_s: list[float], wall_s: float) -> dict:
    ms = np.asarray(latencies_s) * 1000
    return {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)),
            "rps": len(ms) / wall_s, "n": len(ms)}


# --------------------------------------------------------------------------------- in-process
def direct(checkpoint: str, task_name: str, images: list[bytes], requests: int, threads: int) -> dict:
    import torch

    import unip2
    from unip2.tasks import TASKS
    from unip2.tasks.base import input_options

    torch.set_num_threads(threads)
    model = unip2.load(checkpoint).eval()
    task = TASKS[task_name]

    def run(batch_images):
        rows = task.preprocess({"image": batch_images}, **input_options(model.config.task_input_settings(task_name)),
                               tokenizer=model.tokenizer, train=False, rng=np.random.default_rng(0))
        return task.predict(model, task.collate(rows))

    run(images[:2])
    out = {}
    for clients in (1, 16):
        latencies, start = [], time.perf_counter()
        for i in range(0, requests, clients):
            batch = [images[(i + j) % len(images)] for j in range(clients)]
            t0 = time.perf_counter()
            run(batch)
            latencies += [time.perf_counter() - t0] * clients
        out[clients] = summary(latencies, time.perf_counter() - start)
    return out


# ------------------------------------------------------------------------------------ served
async def drive(url: str, images: list[bytes], clients: int, requests: int, path: str) -> dict:
    import aiohttp

    from serve.timing import HEADER, parse_header

    latencies: list[float] = []
    parts: list[dict[str, float]] = []
    counter = iter(range(requests))

    async def client(session):
        for i in counter:
            form = aiohttp.FormData()
            form.add_field("image", images[i % len(images)], filename="image.jpg", content_type="image/jpeg")
            t0 = time.perf_counter()
            async with session.post(url + path, data=form) as response:
                await response.read()
                assert response.status == 200, await response.text()
                timing = parse_header(response.headers.get(HEADER, ""))
            latencies.append(time.perf_counter() - t0)
            if "replica" in timing:
                parts.append({**timing, "proxy": latencies[-1] * 1000 - timing["replica"]})

    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector) as session:
        start = time.perf_counter()
        await asyncio.gather(*(client(session) for _ in range(clients)))
        wall = time.perf_counter() - start
    out = summary(latencies, wall)
    if parts:  # median of each part over the requests, in ms
        out["parts_ms"] = {name: float(np.median([p[name] for p in parts])) for name in parts[0]}
    return out


async def round_trips(url: str, path: str, count: int = 100) -> float:
    import aiohttp

    async with aiohttp.ClientSession() as session:
        times = []
        for _ in range(count):
            t0 = time.perf_counter()
            async with session.get(url + path) as response:
                await response.read()
            times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


def cpu_seconds() -> dict[str, float]:
    """CPU seconds so far of this driver and of the Serve processes, by role."""
    import psutil

    roles = {"ProxyActor": "proxy", ":Model": "model"}
    out = {"proxy": 0.0, "model": 0.0, "client": 0.0}
    for process in psutil.process_iter(["pid", "cmdline", "cpu_times"]):
        try:
            command = " ".join(process.info["cmdline"] or [])
            times = process.info["cpu_times"]
        except (psutil.Error, TypeError):
            continue
        role = "client" if process.info["pid"] == os.getpid() else next(
            (name for key, name in roles.items() if "ray::" in command and key in command), None)
        if role and times is not None:
            out[role] += times.user + times.system
    return out


def served(checkpoint: str, task: str, images, requests: int, batch_size: int, wait: str, threads: int,
           model_cpus: float) -> dict:
    import urllib.request

    from serve.app import AppArgs, build_app
    from serve.local_run import run_local, stop_local

    adaptive = wait == "adaptive"
    args = AppArgs(checkpoint=checkpoint, max_batch_size=batch_size, adaptive_wait=adaptive,
                   batch_wait_timeout_s=0.05 if adaptive else float(wait), torch_threads=threads,
                   model_num_cpus=model_cpus, ingress_num_cpus=0.25, max_queued_requests=-1)
    url = run_local(build_app(args), name="bench")

    def batches() -> dict:
        with urllib.request.urlopen(url + "/v1/stats") as response:
            return __import__("json").loads(response.read())["batches"][task]

    try:
        path = image_route(task)
        asyncio.run(drive(url, images, 4, 16, path))  # warm connections and code paths
        out = {}
        for clients in (1, 16):
            before, cpu_before = batches(), cpu_seconds()
            out[clients] = asyncio.run(drive(url, images, clients, requests, path))
            after, cpu_after = batches(), cpu_seconds()
            batches_run = max(1, after["batches"] - before["batches"])
            out[clients]["batch"] = (after["requests"] - before["requests"]) / batches_run
            out[clients]["cpu_ms"] = {role: 1000 * (cpu_after[role] - cpu_before[role]) / requests
                                      for role in cpu_after}
        out["healthz_ms"] = asyncio.run(round_trips(url, "/healthz"))
    finally:
        stop_local()
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", help="model folder (default: an untrained tiny model)")
    choices = image_tasks()
    parser.add_argument("--task", default=choices[0], choices=choices, help="default: the first registered one")
    parser.add_argument("--requests", type=int, default=160, help="requests per measurement")
    parser.add_argument("--settings", nargs="+", default=["16/adaptive", "16/0.01", "1/0"],
                        help="max_batch_size/batch_wait_timeout_s pairs; 'adaptive' waits while the model is busy")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (direct and served)")
    parser.add_argument("--model-cpus", type=float, default=1.0, help="CPUs reserved for the model replica")
    args = parser.parse_args(argv)

    import ray

    with tempfile.TemporaryDirectory() as scratch:
        checkpoint = args.checkpoint or tiny_checkpoint(Path(scratch))
        images = test_images()
        rows = [("direct in-process", direct(checkpoint, args.task, images, args.requests, args.threads))]
        ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False,
                 configure_logging=False)
        try:
            for setting in args.settings:
                batch_size, wait = setting.split("/")
                result = served(checkpoint, args.task, images, args.requests, int(batch_size), wait, args.threads,
                                args.model_cpus)
                rows.append((f"serve max_batch_size={batch_size} wait={wait}", result))
        finally:
            ray.shutdown()

    print(f"\ntask={args.task} requests={args.requests} torch_threads={args.threads} cpus={os.cpu_count()}")
    print("| setting | clients | p50 ms | p99 ms | req/s | mean batch | CPU ms/req proxy / replica / client |")
    print("|---|---|---|---|---|---|---|")
    for name, result in rows:
        for clients in (1, 16):
            r = result[clients]
            batch = f"{r['batch']:.1f}" if "batch" in r else str(clients)
            cpu = " / ".join(f"{r['cpu_ms'][k]:.1f}" for k in ("proxy", "model", "client")) if "cpu_ms" in r else "-"
            print(f"| {name} | {clients} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['rps']:.1f} | {batch} | {cpu} |")
    print("\nMedian ms of each part of a request (Server-Timing; proxy = client total − replica):")
    for name, result in rows[1:]:
        for clients in (1, 16):
            parts = result[clients].get("parts_ms", {})
            print(f"{name}, {clients} clients: " + ", ".join(f"{k} {v:.2f}" for k, v in parts.items()))
        print(f"{name}: /healthz {result['healthz_ms']:.1f} ms (median)")


if __name__ == "__main__":
    main()
