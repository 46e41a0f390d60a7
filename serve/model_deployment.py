"""The Serve deployment: each replica holds the model and is itself the FastAPI ingress, so a request goes
Serve's HTTP proxy → one model replica, with no second actor hop.

In a replica, a task request is checked (token, deadline, a free slot: ``serve.admission``), read and
validated (``serve.requests`` with the route's fields), its images decoded by the task's own ``preprocess``
on the decode threads (``serve.preprocessing``), then queued on its route's ``@serve.batch`` queue; batches
compute on the one model thread (``serve.batch_queues``). The answer carries a ``Server-Timing`` header
(``serve.timing``) and the replica's name (``X-Replica``).
"""

# No ``from __future__ import annotations`` here: FastAPI reads the route methods' annotations.
import asyncio
import io
from dataclasses import asdict

import ray
import torch
from fastapi import Request
from fastapi.responses import FileResponse, JSONResponse
from PIL import Image
from ray import serve

import unip2
from serve.admission import Admission
from serve.batch_queues import BatchQueues
from serve.errors import ApiError
from serve.gallery import GallerySource, index_gallery
from serve.ingress import REPLICA_HEADER, STATIC, add_task_routes, app, authorize, deadline_s, task_routes
from serve.preprocessing import Preprocessor
from serve.request_models import params_model, route_description, warm_up_params
from serve.requests import ImageField, Limits, parse_request, read_body
from serve.timing import HEADER as TIMING_HEADER, RequestTiming
from unip2.precision import resolve_precision
from unip2.tasks import TASKS
from unip2.tasks.base import input_options
from unip2.tasks.routes import ServeRequest


class ModelReplica:
    """Serves every task route of one checkpoint over HTTP."""

    def __init__(self, checkpoint: str, *, limits: dict | None = None, request_timeout_s: float = 30.0,
                 token_sha256: str | None = None, max_batch_size: int = 16, batch_wait_timeout_s: float = 0.05,
                 adaptive_wait: bool = True, max_ongoing_requests: int = 32, max_queued_requests: int = 64,
                 gallery: dict | None = None, torch_threads: int | None = None, decode_threads: int = 2,
                 warmup: bool = True, precision: str = "auto"):
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        precision = resolve_precision(precision, torch.device(self.device), field="precision")
        torch.set_num_threads(torch_threads or _default_threads())
        self.model = unip2.load(checkpoint, device=self.device).eval()
        self.replica = serve.get_replica_context().replica_id.to_full_id_str()
        self.limits = Limits(**(limits or {}))
        self.request_timeout_s = request_timeout_s
        self.token_sha256 = token_sha256
        self.max_batch_size = max_batch_size
        self.routes = task_routes()
        self.params = {path: params_model(route) for path, (_, route) in self.routes.items()}
        self.image_fields = {path: ImageField.of(route.images) for path, (_, route) in self.routes.items()}
        self.preprocessor = Preprocessor(config=self.model.config, tokenizer=self.model.tokenizer,
                                         threads=decode_threads)
        self.admission = Admission(ongoing=max_ongoing_requests, queued=max_queued_requests)
        self.queues = BatchQueues(self.model, self.routes, {}, max_batch_size=max_batch_size,
                                  batch_wait_timeout_s=batch_wait_timeout_s, adaptive_wait=adaptive_wait,
                                  precision=precision)
        if warmup:
            self._warm_up()
        if gallery:
            source = GallerySource(**gallery)
            for task in {task.name: task for task, route in self.routes.values() if route.uses_gallery}.values():
                self.queues.contexts[task.name] = index_gallery(source, task, self.model, self.preprocessor.run,
                                                                max_batch_size)

    # -------------------------------------------------------------------------- health and info
    @app.get("/healthz", summary="Liveness: the replica answers")
    async def healthz(self) -> dict:
        return {"status": "ok"}

    @app.get("/readyz", summary="Readiness: the model is loaded and answering")
    async def readyz(self):
        return {"status": "ready", "device": self.device, "preset": self.model.config.preset,
                "gallery_size": self._gallery_size()}

    @app.get("/v1/tasks", summary="The tasks served, their endpoints (request fields, how a page shows the "
                                  "answer), input settings and default class names")
    async def tasks(self, request: Request) -> dict:
        authorize(request, self.token_sha256)
        config = self.model.config
        tasks = {}
        for name, task in TASKS.items():
            paths = [route.path for route in task.routes]
            tasks[name] = {"dataset": task.dataset, "metric": task.metric,
                           "class_names": config.class_names.get(task.label_space) if task.label_space else None,
                           **input_options(config.task_input_settings(name)),
                           "endpoint": (paths[0] if len(paths) == 1 else paths) if paths else None,
                           "routes": [route_description(route) for route in task.routes]}
        return {"tasks": tasks, "image_size": config.image_size, "pixel_mean": list(config.pixel_mean),
                "pixel_std": list(config.pixel_std), "limits": asdict(self.limits)}

    @app.get("/v1/stats", summary="Batches run per task in the answering replica")
    async def stats(self, request: Request) -> dict:
        authorize(request, self.token_sha256)
        batches: dict = {}
        for path, stats in self.queues.stats.items():
            total = batches.setdefault(self.routes[path][0].name,
                                       {"batches": 0, "requests": 0, "largest": 0, "compute_s": 0.0})
            total.update(batches=total["batches"] + stats["batches"], requests=total["requests"] + stats["requests"],
                         largest=max(total["largest"], stats["largest"]),
                         compute_s=total["compute_s"] + stats["compute_s"])
        return {"replica": self.replica, "device": self.device, "torch_threads": torch.get_num_threads(),
                "max_batch_size": self.max_batch_size, "batches": batches, "requests": self.admission.stats()}

    @app.get("/", include_in_schema=False)
    async def page(self):
        return FileResponse(STATIC / "index.html", media_type="text/html")

    def check_health(self) -> None:
        if self.model is None:
            raise RuntimeError("model not loaded")

    # ------------------------------------------------------------------------------ task routes
    async def answer(self, path: str, request: Request):
        """One task request, start to end (every generated task route calls this)."""
        timing = RequestTiming()
        authorize(request, self.token_sha256)
        timeout_s = deadline_s(request, self.request_timeout_s)  # a malformed deadline is refused before any work
        task = self.routes[path][0]
        async with self.admission.slot():
            timing.mark("admit")
            await read_body(request, self.limits.max_body_bytes)  # kept on the request for parse_request
            timing.mark("read")
            parsed = await parse_request(request, self.params[path], self.image_fields[path], self.limits)
            timing.mark("parse")
            try:
                answer = await asyncio.wait_for(self._decode_and_queue(path, parsed, timing), timeout_s)
            except asyncio.TimeoutError:
                raise ApiError(408, f"request timed out after {timeout_s:g} s") from None
        if isinstance(answer, ValueError):  # the request's options are wrong (e.g. an empty open vocabulary)
            raise ApiError(422, str(answer))
        if isinstance(answer, BaseException):
            raise answer
        response = JSONResponse({"task": task.name, **answer})
        timing.mark("encode")
        response.headers[TIMING_HEADER] = timing.header()
        response.headers[REPLICA_HEADER] = self.replica
        return response

    async def _decode_and_queue(self, path: str, parsed, timing: RequestTiming):
        task = self.routes[path][0]
        rows = await self.preprocessor.rows(task.name, self.image_fields[path], parsed.images)
        timing.mark("decode")
        answer, started, ended = await self.queues.submit(
            path, ServeRequest(rows=rows, params=parsed.params.model_dump(exclude_none=True)))
        timing.mark("queue", started)
        timing.mark("model", ended)
        return answer

    # ------------------------------------------------------------------------------- internals
    def _gallery_size(self) -> int:
        return max((len(context.gallery_ids) for context in self.queues.contexts.values()), default=0)

    def _warm_up(self) -> None:
        """Every route once, so the first request pays no one-time costs and the clock has durations. A
        synthetic request the task refuses (ValueError) still warms the code before the refusal."""
        buffer = io.BytesIO()
        Image.new("RGB", (64, 48), (127, 127, 127)).save(buffer, format="PNG")
        for path, (task, route) in self.routes.items():
            image_field = self.image_fields[path]
            rows = None if image_field is None else self.preprocessor.run(task.name, buffer.getvalue())
            request = ServeRequest(rows=[rows] if image_field is not None and image_field.many else rows,
                                   params=warm_up_params(self.params[path]))
            (answer,) = self.queues.answer_now(path, [request])
            if isinstance(answer, BaseException) and not isinstance(answer, ValueError):
                raise RuntimeError(f"warm-up of {path} failed") from answer


def _default_threads() -> int:
    """Intra-op threads = the whole CPUs Ray assigned this replica (the fraction above them is for HTTP
    and decoding), at least 1 (Ray's own default is 1)."""
    cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1.0)
    return max(1, int(cpus))


ModelServer = serve.deployment(name="Model", ray_actor_options={"num_cpus": 1}, max_ongoing_requests=128,
                               health_check_period_s=5, health_check_timeout_s=30)(
    serve.ingress(app)(add_task_routes(ModelReplica)))
