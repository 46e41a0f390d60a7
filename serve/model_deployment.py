"""The model replica: one checkpoint, one ``@serve.batch`` queue per kind of work, the tasks' own code.

Requests arrive already preprocessed by the ingress (``serve.preprocessing``: one row of the task's
numpy batch each) and wait in their task's queue; a batch therefore never mixes tasks. Inside a batch,
requests with different options (class names, thresholds, beam size) are predicted in separate groups,
and each request gets back exactly its own row. All model computation runs on one dedicated thread, so
batches of different tasks take turns instead of oversubscribing the cores.

Batch wait: with ``adaptive_wait`` (the default) a request waits for companions only while the model
is busy, at most ``batch_wait_timeout_s`` (``serve.model_clock``); otherwise the fixed timeout applies.
"""

from __future__ import annotations

import asyncio
import io
import json
import math
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import ray
import torch
from PIL import Image
from ray import serve

import unip2
from serve.errors import ApiError
from serve.gallery import GallerySource, read_gallery
from serve.model_clock import ModelClock
from serve.preprocessing import Preprocessor
from unip2.tasks import TASKS
from unip2.tasks.base import input_options

RETRIEVAL = "retrieval"
TEXTS = "retrieval_texts"  # the queue embedding candidate / query sentences


def jsonable(value: Any) -> Any:
    """Predictions (numpy / torch scalars and arrays inside dicts and lists) → plain JSON types."""
    if isinstance(value, dict):
        return {key: jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(item) for item in value]
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().tolist()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def stack_rows(rows: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Single-row preprocess outputs → one batch (every value has the batch on axis 0)."""
    return {key: np.concatenate([row[key] for row in rows]) for key in rows[0]}


@serve.deployment(name="Model", ray_actor_options={"num_cpus": 1}, max_ongoing_requests=64,
                  health_check_period_s=5, health_check_timeout_s=30)
class ModelServer:
    """Serves every task of one checkpoint; called by the ingress through a deployment handle."""

    def __init__(self, checkpoint: str, *, max_batch_size: int = 16, batch_wait_timeout_s: float = 0.05,
                 adaptive_wait: bool = True, gallery: dict | None = None, torch_threads: int | None = None,
                 warmup: bool = True):
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        torch.set_num_threads(torch_threads or _default_threads())
        self.model = unip2.load(checkpoint, device=self.device).eval()
        self.preprocessor = Preprocessor(config=self.model.config, tokenizer=self.model.tokenizer, threads=1)
        self.max_batch_size = max_batch_size
        self.batch_wait_timeout_s = batch_wait_timeout_s
        self.adaptive_wait = adaptive_wait
        self.clock = ModelClock()
        self._compute = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model")
        self.batch_stats = {name: {"batches": 0, "requests": 0, "largest": 0, "compute_s": 0.0}
                            for name in [*TASKS, TEXTS]}
        # Batches are handed to the model thread as soon as they are formed (its FIFO serializes them), so
        # the clock knows all queued work; Serve's own one-batch-at-a-time semaphore would hide it.
        self._queues = {name: serve.batch(max_batch_size=max_batch_size, batch_wait_timeout_s=batch_wait_timeout_s,
                                          max_concurrent_batches=64)(self._batch_runner(name))
                        for name in [*TASKS, TEXTS]}
        if warmup:
            self._warm_up()
        self.gallery_ids: list[int] = []
        self.gallery_embeddings: np.ndarray | None = None
        if gallery:
            self._index_gallery(GallerySource(**gallery))

    # ---------------------------------------------------------------------------- public methods
    async def infer(self, task: str, rows: dict[str, np.ndarray], options: dict) -> dict:
        """One preprocessed image through one task → its prediction (JSON-ready, without ``image_id``)."""
        if task not in TASKS or task == RETRIEVAL:
            raise ApiError(404, f"no task {task!r}")
        result = await self._enqueue(task, (rows, json.dumps(options, sort_keys=True)))
        return _raise_or_return(result)

    async def rank_texts(self, rows: dict[str, np.ndarray], texts: list[str]) -> list[dict]:
        """Candidate texts ranked for one (retrieval-preprocessed) image → [{"index", "text", "score"}]."""
        image_embedding, text_embeddings = await asyncio.gather(self._embed_image(rows), self._embed_texts(texts))
        scores = await self._on_model_thread(self._scores, image_embedding, text_embeddings)
        order = np.argsort(-scores, kind="stable")
        return [{"index": int(i), "text": texts[i], "score": float(scores[i])} for i in order]

    async def rank_images(self, text: str, images: list[dict[str, np.ndarray]], top_k: int) -> dict:
        """Images (preprocessed rows) ranked for one text; the indexed gallery when none are uploaded."""
        if images:
            embeddings = np.stack(await asyncio.gather(*(self._embed_image(rows) for rows in images)))
            ids = None
        elif self.gallery_embeddings is not None:
            embeddings, ids = self.gallery_embeddings, self.gallery_ids
        else:
            raise ApiError(422, "images: field required (this server has no indexed gallery)")
        query = await self._embed_texts([text])
        scores = await self._on_model_thread(self._scores, query[0], embeddings)
        order = np.argsort(-scores, kind="stable")[:top_k]
        results = []
        for index in order:
            item = {"index": int(index), "score": float(scores[index])}
            if ids is not None:
                item["image_id"] = ids[index]
            results.append(item)
        return {"gallery": "uploaded" if ids is None else "indexed", "results": results}

    def describe(self) -> dict:
        """What this replica serves (for ``/v1/tasks`` and ``/readyz``)."""
        config = self.model.config
        tasks = {name: {"dataset": task.dataset, "metric": task.metric,
                        "class_names": config.class_names.get(task.label_space) if task.label_space else None,
                        **input_options(config.task_input_settings(name))}
                 for name, task in TASKS.items()}
        return {"tasks": tasks, "replica": serve.get_replica_context().replica_id.to_full_id_str(),
                "device": self.device, "preset": config.preset, "image_size": config.image_size,
                "pixel_mean": list(config.pixel_mean), "pixel_std": list(config.pixel_std),
                "torch_threads": torch.get_num_threads(), "max_batch_size": self.max_batch_size,
                "gallery_size": len(self.gallery_ids), "batches": self.batch_stats}

    def check_health(self) -> None:
        if self.model is None:
            raise RuntimeError("model not loaded")

    # ------------------------------------------------------------------------------- internals
    async def _embed_image(self, rows: dict[str, np.ndarray]) -> np.ndarray:
        return _raise_or_return(await self._enqueue(RETRIEVAL, (rows, "{}")))["image_embedding"]

    async def _embed_texts(self, texts: list[str]) -> np.ndarray:
        return _raise_or_return(await self._enqueue(TEXTS, texts))

    def _enqueue(self, name: str, item):
        queue = self._queues[name]
        if self.adaptive_wait:  # read by the queue when this request opens a new batch
            queue.set_batch_wait_timeout_s(self.clock.wait_s(self.batch_wait_timeout_s))
        return queue(item)

    async def _on_model_thread(self, fn, *args, kind: str = "other"):
        """Run ``fn`` on the model thread; its duration feeds the clock behind the adaptive wait."""
        def timed():
            start = time.perf_counter()
            return fn(*args), time.perf_counter() - start

        self.clock.submitted(kind)
        seconds = 0.0
        try:
            result, seconds = await asyncio.get_running_loop().run_in_executor(self._compute, timed)
        finally:  # bookkeeping stays on the event loop: no locks needed
            self.clock.finished(kind, seconds)
            if kind in self.batch_stats:
                self.batch_stats[kind]["compute_s"] += seconds
        return result

    def _batch_runner(self, name: str):
        async def run(items: list) -> list:
            stats = self.batch_stats[name]
            stats["batches"] += 1
            stats["requests"] += len(items)
            stats["largest"] = max(stats["largest"], len(items))
            work = self._embed_text_batch if name == TEXTS else self._predict_batch
            return await self._on_model_thread(work, name, items, kind=name)
        run.__name__ = f"batch_{name}"
        return run

    @torch.no_grad()
    def _predict_batch(self, name: str, items: list[tuple[dict, str]]) -> list:
        """[(preprocessed row, options JSON)] → one result per item (a dict, or the exception it raised)."""
        task = TASKS[name]
        results: list = [None] * len(items)
        groups: dict[str, list[int]] = defaultdict(list)
        for index, (_, options) in enumerate(items):
            groups[options].append(index)
        for options, indices in groups.items():
            try:
                batch = task.collate(stack_rows([items[i][0] for i in indices]), device=self.device)
                predictions = task.predict(self.model, batch, **json.loads(options))
                for index, prediction in zip(indices, predictions):
                    prediction.pop("image_id", None)
                    results[index] = prediction if name == RETRIEVAL else jsonable(prediction)
            except ValueError as err:  # e.g. an empty open vocabulary: the request's options are wrong
                for index in indices:
                    results[index] = ApiError(422, str(err))
            except Exception as err:  # a bug must not take the other groups' requests down with it
                for index in indices:
                    results[index] = err
        return results

    @torch.no_grad()
    def _embed_text_batch(self, name: str, items: list[list[str]]) -> list:
        texts = [text for item in items for text in item]
        try:
            embeddings = TASKS[RETRIEVAL].embed_texts(self.model, texts).float().cpu().numpy()
        except Exception as err:
            return [err] * len(items)
        bounds = np.cumsum([0] + [len(item) for item in items])
        return [embeddings[start:end] for start, end in zip(bounds[:-1], bounds[1:])]

    @torch.no_grad()
    def _scores(self, query: np.ndarray, candidates) -> np.ndarray:
        """D and N×D embeddings → N retrieval scores (the model's own scoring)."""
        query = torch.as_tensor(query, device=self.device).unsqueeze(0)
        candidates = torch.as_tensor(candidates, device=self.device)
        return self.model.score(query, candidates, RETRIEVAL)[0].float().cpu().numpy()

    @torch.no_grad()
    def _warm_up(self) -> None:
        """Run every task once, so the first request pays no one-time costs and the clock has durations."""
        buffer = io.BytesIO()
        Image.new("RGB", (64, 48), (127, 127, 127)).save(buffer, format="PNG")
        for name in [*TASKS, TEXTS]:
            if name != TEXTS and not any(route.images != "none" for route in TASKS[name].routes):
                continue  # a text-only task: this app serves image routes
            start = time.perf_counter()
            if name == TEXTS:
                _raise_or_return(self._embed_text_batch(TEXTS, [["warm up"]])[0])
            else:
                rows = self.preprocessor.run(name, buffer.getvalue())
                _raise_or_return(self._predict_batch(name, [(rows, "{}")])[0])
            self.clock.mean_s[name] = time.perf_counter() - start

    @torch.no_grad()
    def _index_gallery(self, source: GallerySource) -> None:
        ids, images = read_gallery(source)
        embeddings = []
        for start in range(0, len(images), self.max_batch_size):
            rows = [self.preprocessor.run(RETRIEVAL, image) for image in images[start:start + self.max_batch_size]]
            for result in self._predict_batch(RETRIEVAL, [(row, "{}") for row in rows]):
                embeddings.append(_raise_or_return(result)["image_embedding"])
        self.gallery_ids = ids
        self.gallery_embeddings = np.stack(embeddings) if embeddings else None


def _raise_or_return(result):
    if isinstance(result, BaseException):
        raise result
    return result


def _default_threads() -> int:
    """Intra-op threads = the CPUs Ray assigned this replica, rounded up (Ray's own default is 1)."""
    cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1.0)
    return max(1, math.ceil(cpus))
