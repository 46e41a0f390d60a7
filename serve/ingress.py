"""The HTTP face of the model replica: the FastAPI app, its task routes built from the registry, the checks
every route shares (bearer token, client deadline).

Routes (JSON in and out; OpenAPI docs at ``/docs``):

    POST <Route.path>   one per route a task in ``unip2.tasks.TASKS`` declares (``GET /v1/tasks`` lists them),
                        e.g. /v1/classify: image [+ class_names, top_k] → {"task": "classification", ...}
    GET  /v1/tasks   GET /v1/stats   GET /healthz (liveness)   GET /readyz (model loaded)   GET / (demo page)

A task route's fields are its ``Route.params`` dataclass (``serve.request_models``), its image field is
``image``, ``images`` or none (``Route.images``), and its answer is ``{"task": <name>, **<the task's answer>}``.
"""

# No ``from __future__ import annotations`` here: FastAPI reads the route methods' annotations after
# ``serve.ingress`` has wrapped them, and string annotations no longer resolve there.
import hashlib
import hmac
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.staticfiles import StaticFiles

from serve.errors import ApiError, install_error_handlers
from serve.request_models import params_model
from serve.requests import ImageField, json_schemas
from unip2.tasks import TASKS, Task
from unip2.tasks.routes import Route

STATIC = Path(__file__).parent / "static"
REPLICA_HEADER = "X-Replica"
"""Response header of every task answer naming the replica (its Ray actor name) that computed it."""

app = FastAPI(title="unip2", version="0.1.0",
              description="Uni-Perceiver v2: one generalist model for classification, detection, instance "
                          "segmentation, captioning and image-text retrieval. Send an image as a "
                          "multipart file field `image` (lists as JSON strings) or as base64 in a JSON "
                          "body. With a server token set, send `Authorization: Bearer <token>`.")
install_error_handlers(app)
app.mount("/static", StaticFiles(directory=STATIC), name="static")


def task_routes() -> dict[str, tuple[Task, Route]]:
    """Every route the registry's tasks declare, by path (a path declared twice is refused)."""
    routes: dict[str, tuple[Task, Route]] = {}
    for task in TASKS.values():
        for route in task.routes:
            if route.path in routes:
                raise ValueError(f"route {route.path}: declared by both {routes[route.path][0].name} and {task.name}")
            routes[route.path] = (task, route)
    return routes


def add_task_routes(cls: type) -> type:
    """Give ``cls`` one ``POST`` method per task route, each calling ``cls.answer(path, request)``; registered on
    ``app`` so ``serve.ingress(app)`` binds them to the replica like hand-written route methods."""
    for path, (task, route) in task_routes().items():
        name = path.removeprefix("/v1/").strip("/").replace("/", "_").replace("-", "_")
        handler = _route_method(path)
        handler.__name__ = name
        handler.__qualname__ = f"{cls.__qualname__}.{name}"  # how serve.ingress finds the class's routes
        handler.__doc__ = route.summary
        schema = json_schemas(params_model(route), ImageField.of(route.images))
        setattr(cls, name, app.post(path, summary=route.summary, openapi_extra=schema)(handler))
    return cls


def _route_method(path: str):
    async def handler(self, request: Request):
        return await self.answer(path, request)
    return handler


def authorize(request: Request, token_sha256: str | None) -> None:
    """Refuse (401) a request without the server's bearer token, when it has one."""
    if token_sha256 is None:
        return
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    digest = hashlib.sha256(token.strip().encode()).hexdigest()
    if scheme.lower() != "bearer" or not hmac.compare_digest(digest, token_sha256):
        raise ApiError(401, "missing or wrong bearer token", {"WWW-Authenticate": "Bearer"})


def deadline_s(request: Request, server_timeout_s: float) -> float:
    """The server's request timeout, or a shorter deadline the client asked for (``X-Request-Timeout``)."""
    asked = request.headers.get("x-request-timeout")
    if asked is None:
        return server_timeout_s
    try:
        seconds = float(asked)
    except ValueError:
        raise ApiError(400, f"X-Request-Timeout: not a number of seconds: {asked!r}") from None
    if not seconds > 0:
        raise ApiError(400, "X-Request-Timeout: must be > 0")
    return min(seconds, server_timeout_s)
