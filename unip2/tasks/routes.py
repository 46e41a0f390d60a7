"""How a task declares its Serve endpoints and answers them: the HTTP layer (``serve/``) builds every route
from these declarations, so a task file alone adds an endpoint.

A route names its request's fields with a plain dataclass (``params``): each field's type, default and, in its
``metadata``, the checks ``ge``, ``le``, ``min_length``, ``max_length`` (of a list or a string),
``item_max_length`` (of each string in a list) and a ``description``. A batch of requests reaches the task
method named by ``answer`` as ``ServeRequest`` items; it returns one JSON-ready dict per request, or the
exception that request raised (a ``ValueError`` is the request's fault: its options are wrong).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np


@dataclass(frozen=True)
class Route:
    """One HTTP endpoint of a task."""

    path: str
    """URL path, e.g. ``/v1/classify``."""
    summary: str
    """One line for the API docs."""
    params: type
    """Dataclass of the request's fields besides its images (see the module docstring)."""
    images: Literal["one", "many", "none"] = "one"
    """The image field: ``image`` (exactly one), ``images`` (a list, possibly empty), or no image at all."""
    answer: str = "answer_predict"
    """Name of the task method answering a batch: ``(model, requests, context) → results``."""
    uses_gallery: bool = False
    """The route ranks the server's indexed gallery when a request brings no images."""
    shows: Literal["instances", "labels", "text", "ranking", "json"] = "json"
    """How the demo page shows an answer: ``instances`` drawn on the image (``boxes``, ``names``, ``scores``,
    ``labels``, optional ``masks``), ``labels`` as a table (``top_names``, ``top_scores``), ``text`` (the
    answer's first string field besides ``task``), ``ranking`` as a list (``results``: ``text`` or ``image_id``, ``score``),
    ``json`` as it came."""
    example: dict[str, Any] = field(default_factory=dict)
    """Field values the demo page's form starts from (a required field needs one for the page to send it)."""


@dataclass
class ServeRequest:
    """One request in a batch: its preprocessed image rows and its validated parameters."""

    rows: dict[str, np.ndarray] | list[dict[str, np.ndarray]] | None
    """One-row ``preprocess`` output (route ``images="one"``), a list of them (``"many"``) or None."""
    params: dict[str, Any]
    """The route's ``params`` fields as sent (defaults filled, None left out)."""


@dataclass
class ServeContext:
    """What the server holds besides the model."""

    gallery_ids: list[int] = field(default_factory=list)
    """Ids of the indexed gallery images (empty: no gallery)."""
    gallery_embeddings: np.ndarray | None = None
    """N×D embeddings of the gallery images (``Task.gallery_embeddings``), or None."""


def jsonable(value: Any) -> Any:
    """Predictions (numpy / torch scalars and arrays inside dicts and lists) → plain JSON types."""
    if isinstance(value, dict):
        return {key: jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(item) for item in value]
    if hasattr(value, "detach"):  # a torch tensor
        return value.detach().cpu().tolist()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def stack_rows(rows: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Single-row preprocess outputs → one batch (every value has the batch on axis 0)."""
    return {key: np.concatenate([row[key] for row in rows]) for key in rows[0]}
