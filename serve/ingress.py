"""The HTTP face of the app: a FastAPI ingress deployment over the model deployment.

Routes (JSON in and out; OpenAPI docs at ``/docs``):

    POST /v1/classify          image [+ class_names, top_k]                       → top-k labels
    POST /v1/detect            image [+ class_names, score_threshold, max_detections] → boxes x,y,w,h
    POST /v1/segment           as detect                                          → + masks (COCO RLE)
    POST /v1/caption           image [+ beam_size, max_length]                    → caption, beams
    POST /v1/retrieve/text     image + texts                                      → texts ranked
    POST /v1/retrieve/image    text [+ images]  (no images: the indexed gallery)  → images ranked
    GET  /v1/tasks   GET /healthz (liveness)   GET /readyz (model loaded)   GET / (demo page)

The ingress checks requests (limits, image headers, parameters), then decodes and preprocesses the
image with the task's own ``preprocess`` (``serve.preprocessing``) and sends the model replica a ready
row to batch: decoding there would hold the GIL against the model and starve batching.
"""

# No ``from __future__ import annotations`` here: FastAPI reads the route methods' annotations after
# ``serve.ingress`` has wrapped them, and string annotations no longer resolve there.
import asyncio
import hashlib
import hmac
from dataclasses import asdict
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from ray import serve
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError
from ray.serve.handle import DeploymentHandle

from serve.errors import ApiError, error_response, install_error_handlers
from serve.preprocessing import Preprocessor
from serve.requests import (CaptionParams, ClassifyParams, DetectParams, ImageField, Limits, Params,
                            RetrieveImageParams, RetrieveTextParams, json_schemas, parse_request)

STATIC = Path(__file__).parent / "static"
ONE_IMAGE, GALLERY = ImageField("image"), ImageField("images", many=True)
# Endpoint of each task (the task names are the registry's, unip2.tasks.TASKS).
ENDPOINTS = {"classification": "/v1/classify", "detection": "/v1/detect",
             "instance_segmentation": "/v1/segment", "captioning": "/v1/caption",
             "retrieval": ["/v1/retrieve/text", "/v1/retrieve/image"]}
RETRY_AFTER_S = "1"

app = FastAPI(title="unip2", version="0.1.0",
              description="Uni-Perceiver v2: one generalist model for classification, detection, instance "
                          "segmentation, captioning and image-text retrieval. Send an image as a "
                          "multipart file field `image` (lists as JSON strings) or as base64 in a JSON "
                          "body. With a server token set, send `Authorization: Bearer <token>`.")
install_error_handlers(app)
app.mount("/static", StaticFiles(directory=STATIC), name="static")


@serve.deployment(name="Ingress", ray_actor_options={"num_cpus": 0.25}, max_ongoing_requests=256)
@serve.ingress(app)
class Ingress:
    """Parses and checks requests, calls the model deployment, maps every failure to a JSON status."""

    def __init__(self, model: DeploymentHandle, checkpoint: str, *, limits: dict | None = None,
                 request_timeout_s: float = 30.0, token_sha256: str | None = None):
        self.model = model
        self.preprocess = Preprocessor.from_checkpoint(checkpoint)
        self.limits = Limits(**(limits or {}))
        self.request_timeout_s = request_timeout_s
        self.token_sha256 = token_sha256
        self._description: dict | None = None

    # -------------------------------------------------------------------------- health and info
    @app.get("/healthz", summary="Liveness: the ingress answers")
    async def healthz(self) -> dict:
        return {"status": "ok"}

    @app.get("/readyz", summary="Readiness: the model is loaded and answering")
    async def readyz(self):
        response = self.model.describe.remote()

        async def result():
            return await response

        try:
            description = await asyncio.wait_for(result(), timeout=5.0)
        except Exception as err:  # noqa: BLE001 - any failure means "not ready"
            response.cancel()
            return error_response(503, f"model not ready ({type(err).__name__})", {"Retry-After": RETRY_AFTER_S})
        self._description = description
        return {"status": "ready", "device": description["device"], "preset": description["preset"],
                "gallery_size": description["gallery_size"]}

    @app.get("/v1/tasks", summary="The tasks served, their endpoints, input settings and default class names")
    async def tasks(self, request: Request) -> dict:
        self._authorize(request)
        if self._description is None:
            self._description = await self._call(self.model.describe.remote())
        return {"tasks": {name: {**info, "endpoint": ENDPOINTS.get(name)}
                          for name, info in self._description["tasks"].items()},
                "image_size": self._description["image_size"], "pixel_mean": self._description["pixel_mean"],
                "pixel_std": self._description["pixel_std"], "limits": asdict(self.limits)}

    @app.get("/v1/stats", summary="Batches run per task queue in the answering model replica")
    async def stats(self, request: Request) -> dict:
        self._authorize(request)
        description = await self._call(self.model.describe.remote())
        return {"replica": description["replica"], "device": description["device"],
                "torch_threads": description["torch_threads"],
                "max_batch_size": description["max_batch_size"], "batches": description["batches"]}

    @app.get("/", include_in_schema=False)
    async def page(self):
        return FileResponse(STATIC / "index.html", media_type="text/html")

    # ------------------------------------------------------------------------------ the tasks
    @app.post("/v1/classify", summary="Top-k labels of an image", openapi_extra=json_schemas(ClassifyParams, ONE_IMAGE))
    async def classify(self, request: Request):
        return await self._predict(request, "classification", ClassifyParams)

    @app.post("/v1/detect", summary="Boxes (x, y, w, h in input pixels), labels, scores",
              openapi_extra=json_schemas(DetectParams, ONE_IMAGE))
    async def detect(self, request: Request):
        return await self._predict(request, "detection", DetectParams)

    @app.post("/v1/segment", summary="As detect, plus each instance's mask as COCO RLE",
              openapi_extra=json_schemas(DetectParams, ONE_IMAGE))
    async def segment(self, request: Request):
        return await self._predict(request, "instance_segmentation", DetectParams)

    @app.post("/v1/caption", summary="A caption and the beams with their scores",
              openapi_extra=json_schemas(CaptionParams, ONE_IMAGE))
    async def caption(self, request: Request):
        return await self._predict(request, "captioning", CaptionParams)

    @app.post("/v1/retrieve/text", summary="Candidate texts ranked for an image",
              openapi_extra=json_schemas(RetrieveTextParams, ONE_IMAGE))
    async def retrieve_text(self, request: Request):
        parsed = await self._parse(request, RetrieveTextParams, ONE_IMAGE)
        rows = await self.preprocess("retrieval", parsed.images[0])
        results = await self._call(self.model.rank_texts.remote(rows, parsed.params.texts), request)
        return {"task": "retrieval", "results": results}

    @app.post("/v1/retrieve/image", summary="Images (uploaded, or the indexed gallery) ranked for a text",
              openapi_extra=json_schemas(RetrieveImageParams, GALLERY))
    async def retrieve_image(self, request: Request):
        parsed = await self._parse(request, RetrieveImageParams, GALLERY)
        params = parsed.params
        rows = await asyncio.gather(*(self.preprocess("retrieval", image, f"images[{index}]")
                                      for index, image in enumerate(parsed.images)))
        ranked = await self._call(self.model.rank_images.remote(params.text, list(rows), params.top_k), request)
        return {"task": "retrieval", **ranked}

    # ------------------------------------------------------------------------------ internals
    async def _predict(self, request: Request, task: str, params_model: type[Params]) -> dict:
        parsed = await self._parse(request, params_model, ONE_IMAGE)
        options = parsed.params.model_dump(exclude_none=True)
        rows = await self.preprocess(task, parsed.images[0])
        prediction = await self._call(self.model.infer.remote(task, rows, options), request)
        return {"task": task, **prediction}

    async def _parse(self, request: Request, params_model: type[Params], image_field: ImageField):
        self._authorize(request)
        self._timeout(request)  # refuse a malformed deadline before any work
        return await parse_request(request, params_model, image_field, self.limits)

    def _authorize(self, request: Request) -> None:
        if self.token_sha256 is None:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        digest = hashlib.sha256(token.strip().encode()).hexdigest()
        if scheme.lower() != "bearer" or not hmac.compare_digest(digest, self.token_sha256):
            raise ApiError(401, "missing or wrong bearer token", {"WWW-Authenticate": "Bearer"})

    def _timeout(self, request: Request | None) -> float:
        """The server's request timeout, or a shorter deadline the client asked for (X-Request-Timeout)."""
        asked = request.headers.get("x-request-timeout") if request is not None else None
        if asked is None:
            return self.request_timeout_s
        try:
            seconds = float(asked)
        except ValueError:
            raise ApiError(400, f"X-Request-Timeout: not a number of seconds: {asked!r}") from None
        if not seconds > 0:
            raise ApiError(400, "X-Request-Timeout: must be > 0")
        return min(seconds, self.request_timeout_s)

    async def _call(self, response, request: Request | None = None):
        """Await a model call within the timeout; map its failures to JSON statuses."""
        async def result():
            return await response

        timeout_s = self._timeout(request)
        try:
            return await asyncio.wait_for(result(), timeout=timeout_s)
        except ApiError as err:  # the replica refused the input (e.g. a truncated image)
            raise ApiError(err.code, err.message, err.headers) from None
        except asyncio.TimeoutError:
            response.cancel()
            raise ApiError(408, f"request timed out after {timeout_s:g} s") from None
        except BackPressureError:
            raise ApiError(503, "server overloaded: too many queued requests",
                           {"Retry-After": RETRY_AFTER_S}) from None
        except (ActorDiedError, ActorUnavailableError, RayActorError, DeploymentUnavailableError) as err:
            raise ApiError(503, f"model replica unavailable ({type(err).__name__}); retry",
                           {"Retry-After": RETRY_AFTER_S}) from None
