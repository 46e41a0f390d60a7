"""One ``@serve.batch`` queue per task route, and the one thread every batch computes on.

A request joins its route's queue with its rows already decoded (``serve.preprocessing``); a batch therefore
never mixes routes, and the task's answer method (``Route.answer``) gets the whole batch: requests with
different options are grouped there, and each request gets back exactly its own answer (or the exception it
raised). All model computation runs on one dedicated thread, so batches of different routes take turns
instead of oversubscribing the cores, and the event loop stays free to read and parse the next requests.

Batch wait: with ``adaptive_wait`` a request waits for companions only while the model is busy, at most
``batch_wait_timeout_s`` (``serve.model_clock``); otherwise the fixed timeout applies. A formed batch is handed
over at once (so the clock knows all queued work) and waits for the model thread in a FIFO; when the thread
frees, it takes the oldest waiting batch together with the later ones of the same route, up to
``max_batch_size`` requests. Under load, batches formed while the model was busy therefore run as one: with
16 clients, Serve's batches alone averaged 4.6 requests while 12 waited.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import torch
from ray import serve

from serve.model_clock import ModelClock
from unip2.precision import autocast
from unip2.tasks import Task
from unip2.tasks.routes import Route, ServeContext, ServeRequest

# (the request's answer or the exception it raised, batch start, batch end), times from time.perf_counter().
Answered = tuple[Any, float, float]


@dataclass
class FormedBatch:
    """A batch ``@serve.batch`` formed, waiting for the model thread; one future per request."""

    path: str
    requests: list[ServeRequest]
    answers: list[asyncio.Future] = field(default_factory=list)


class BatchQueues:
    """The batch queues of ``routes`` (path → (task, route)) over ``model``."""

    def __init__(self, model, routes: dict[str, tuple[Task, Route]], contexts: dict[str, ServeContext], *,
                 max_batch_size: int, batch_wait_timeout_s: float, adaptive_wait: bool, precision: str = "fp32"):
        """precision: a resolved one (``unip2.precision.resolve_precision``), bf16 or fp32."""
        self.model = model
        self.precision = precision
        self.routes = routes
        self.contexts = contexts
        self.max_batch_size = max_batch_size
        self.batch_wait_timeout_s = batch_wait_timeout_s
        self.adaptive_wait = adaptive_wait
        self.clock = ModelClock()
        self.stats = {path: {"batches": 0, "requests": 0, "largest": 0, "compute_s": 0.0} for path in routes}
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model")
        self._waiting: deque[FormedBatch] = deque()
        self._running = False
        self._dispatcher: asyncio.Task | None = None  # kept referenced while it runs
        # The batch function only hands the formed batch over and returns, so one batch at a time per queue
        # (Serve's default) never holds back the next one.
        self._queues = {path: serve.batch(max_batch_size=max_batch_size,
                                          batch_wait_timeout_s=batch_wait_timeout_s)(self._runner(path))
                        for path in routes}

    async def submit(self, path: str, request: ServeRequest) -> Answered:
        """Queue one request on route ``path`` → its answer once its batch has run."""
        queue = self._queues[path]
        if self.adaptive_wait:  # read by the queue when this request opens a new batch
            queue.set_batch_wait_timeout_s(self.clock.wait_s(self.batch_wait_timeout_s))
        answer = await queue(request)  # its batch is formed: a future in the model thread's FIFO
        return await answer

    def answer_now(self, path: str, requests: list[ServeRequest]) -> list:
        """A batch answered on the calling thread (the start-up warm-up); its duration primes the clock."""
        answers, started, ended = self._compute(path, requests)
        self.clock.mean_s[path] = ended - started
        return answers

    def context(self, path: str) -> ServeContext:
        """What route ``path`` ranks besides its requests: its task's indexed gallery, if the route uses one."""
        task, route = self.routes[path]
        return self.contexts.get(task.name, ServeContext()) if route.uses_gallery else ServeContext()

    # ------------------------------------------------------------------------------- internals
    def _runner(self, path: str):
        async def run(requests: list[ServeRequest]) -> list[asyncio.Future]:
            loop = asyncio.get_running_loop()
            batch = FormedBatch(path, requests, [loop.create_future() for _ in requests])
            self.clock.submitted(path)
            self._waiting.append(batch)
            if not self._running:
                self._running = True
                self._dispatcher = loop.create_task(self._run_waiting())
            return batch.answers
        run.__name__ = "batch_" + path.strip("/").replace("/", "_")
        return run

    async def _run_waiting(self) -> None:
        """Run the waiting batches on the model thread until none is left (bookkeeping on the event loop: no
        locks). The oldest batch runs with the later ones of its route, up to max_batch_size requests."""
        try:
            while self._waiting:
                merged = self._take_merged()
                path = merged[0].path
                requests = [request for batch in merged for request in batch.requests]
                try:
                    answers, started, ended = await asyncio.get_running_loop().run_in_executor(
                        self._thread, self._compute, path, requests)
                except RuntimeError as err:  # the model thread is shut down: these requests fail, none hangs
                    answers, started, ended = [err] * len(requests), time.perf_counter(), time.perf_counter()
                for index, batch in enumerate(merged):  # one run: the clock learns its duration once
                    self.clock.finished(path, ended - started if index == 0 else 0.0)
                self._count(path, len(requests), ended - started)
                futures = [future for batch in merged for future in batch.answers]
                for future, answer in zip(futures, answers):
                    if not future.done():  # its caller may have gone (deadline passed)
                        future.set_result((answer, started, ended))
        finally:
            self._running = False

    def _take_merged(self) -> list[FormedBatch]:
        first = self._waiting.popleft()
        merged, size, kept = [first], len(first.requests), deque()
        while self._waiting:
            batch = self._waiting.popleft()
            if batch.path == first.path and size + len(batch.requests) <= self.max_batch_size:
                merged.append(batch)
                size += len(batch.requests)
            else:
                kept.append(batch)
        self._waiting = kept
        return merged

    def _count(self, path: str, requests: int, seconds: float) -> None:
        stats = self.stats[path]
        stats["batches"] += 1
        stats["requests"] += requests
        stats["largest"] = max(stats["largest"], requests)
        stats["compute_s"] += seconds

    def _compute(self, path: str, requests: list[ServeRequest]) -> tuple[list, float, float]:
        task, route = self.routes[path]
        started = time.perf_counter()
        try:
            with torch.no_grad(), autocast(self.precision, self.model.pixel_mean.device):
                answers = getattr(task, route.answer)(self.model, requests, self.context(path))
            if len(answers) != len(requests):
                raise RuntimeError(f"{task.name}.{route.answer} returned {len(answers)} answers for "
                                   f"{len(requests)} requests")
        except Exception as err:  # noqa: BLE001 - every request of the batch gets the failure as its answer
            answers = [err] * len(requests)
        return answers, started, time.perf_counter()
