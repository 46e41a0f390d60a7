"""Inference as users call it: ``model.predict(images, task=..., **options)`` on what ``unip2.build_model`` and
``unip2.load`` return.

    model = unip2.load("runs/<run>/checkpoint")
    model.predict("cat.jpg", task="classification", top_k=3)          # → {"task": "classification", ...}
    model.predict([Image.open("a.png"), b"...", array], task="detection", max_detections=10)   # → a list
    model.predict(task="language_modelling", text="a red <mask> circle")   # a route without images

It takes the path Serve takes: each image through the task's ``preprocess`` at the input settings the checkpoint
recorded, the requests through the task's route (its answer method, its options as the route's request fields),
so the answer is exactly the route's JSON (``{"task": ..., **answer}``).
"""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch
from PIL import Image

from unip2.model.generalist import UniPerceiverV2
from unip2.precision import autocast, resolve_precision
from unip2.tasks import get_task
from unip2.tasks.base import Task, input_options
from unip2.tasks.routes import Route, ServeContext, ServeRequest, jsonable

ImageInput = Union[str, Path, bytes, Image.Image, np.ndarray]
"""A file path, the encoded file's bytes, a PIL image, or an H×W×3 uint8 RGB array."""


def encoded(image: ImageInput) -> bytes:
    """Any accepted image → encoded bytes (paths read as they are; PIL images and arrays as PNG)."""
    if isinstance(image, (str, Path)):
        return Path(image).read_bytes()
    if isinstance(image, (bytes, bytearray, memoryview)):
        return bytes(image)
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim not in (2, 3):
            raise ValueError(f"an image array must be H×W or H×W×3 uint8, got {image.dtype} {image.shape}")
        image = Image.fromarray(image)
    if isinstance(image, Image.Image):
        buffer = io.BytesIO()
        image.convert("RGB").save(buffer, format="PNG")
        return buffer.getvalue()
    raise TypeError(f"not an image: {type(image).__name__} (give a path, bytes, a PIL image or a uint8 array)")


def image_route(task: Task, path: str | None = None) -> Route:
    """The task's route ``path``, else its first one."""
    if not task.routes:
        raise ValueError(f"the {task.name} task has no route to predict through")
    if path is None:
        return task.routes[0]
    for route in task.routes:
        if route.path == path:
            return route
    raise ValueError(f"the {task.name} task has no route {path!r}; its routes: {[r.path for r in task.routes]}")


def request_params(route: Route, options: dict[str, Any]) -> dict[str, Any]:
    """The route's request fields from ``options`` (unknown ones refused), defaults filled, None left out: what
    Serve passes the answer method."""
    names = {field.name for field in dataclasses.fields(route.params)}
    unknown = sorted(set(options) - names)
    if unknown:
        raise ValueError(f"{route.path} takes {sorted(names) or 'no options'}; not {unknown}")
    return {key: value for key, value in dataclasses.asdict(route.params(**options)).items() if value is not None}


class Model(UniPerceiverV2):
    """The model ``unip2.build_model`` and ``unip2.load`` return: ``UniPerceiverV2`` with ``predict``."""

    @torch.no_grad()
    def predict(self, images: ImageInput | list[ImageInput] | None = None, *, task: str, route: str | None = None,
                batch_size: int = 16, precision: str = "auto", context: ServeContext | None = None,
                **options: Any) -> dict | list[dict]:
        """The task's answer for each image (one image → one answer; a list → a list), as its Serve route gives it.

        ``route``: which of the task's routes (default: its first). A route taking many images (retrieval's
        ``/v1/retrieve/image``) gets them all in one request; one without images takes none. ``options``: the
        route's request fields (e.g. ``top_k``, ``class_names``). ``precision`` as ``train.precision``.
        An image that does not decode raises ``UndecodableImage`` (a ValueError) naming its position.
        """
        spec = get_task(task)
        chosen = image_route(spec, route)
        params = request_params(chosen, options)
        single = images is not None and not isinstance(images, list)
        listed = [] if images is None else [images] if single else list(images)
        rows = [self._rows(spec, image, index) for index, image in enumerate(listed)]
        if chosen.images == "one":
            if not rows:
                raise ValueError(f"{chosen.path} answers one image per request: give at least one")
            requests = [ServeRequest(rows=row, params=params) for row in rows]
        elif chosen.images == "many":
            requests, single = [ServeRequest(rows=rows, params=params)], True
        else:
            if rows:
                raise ValueError(f"{chosen.path} takes no image")
            requests, single = [ServeRequest(rows=None, params=params)], True
        answer = getattr(spec, chosen.answer)
        device = self.pixel_mean.device
        was_training = self.training
        self.eval()
        try:
            answers = []
            with autocast(resolve_precision(precision, device), device):
                for start in range(0, len(requests), batch_size):
                    answers += answer(self, requests[start:start + batch_size], context or ServeContext())
        finally:
            self.train(was_training)
        for result in answers:
            if isinstance(result, BaseException):
                raise result
        results = [{"task": spec.name, **jsonable(result)} for result in answers]
        return results[0] if single else results

    def _rows(self, task: Task, image: ImageInput, index: int) -> dict[str, np.ndarray]:
        settings = self.config.task_input_settings(task.name)
        try:
            return task.preprocess({"image": [encoded(image)]}, **input_options(settings), tokenizer=self.tokenizer,
                                   train=False, rng=np.random.default_rng(0))
        except ValueError as err:  # UndecodableImage included: say which one
            raise type(err)(f"image {index}: {err}") from None
