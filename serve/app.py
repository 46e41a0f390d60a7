"""The Serve application: ``build_app`` binds the ingress to the model deployment from typed arguments.

    serve run serve.app:build_app checkpoint=runs/tiny/model
    serve run serve.app:build_app checkpoint=runs/tiny/model gallery=data/parquet max_batch_size=32
    UNIP2_SERVE_TOKEN=secret serve run serve.app:build_app checkpoint=runs/tiny/model
    serve deploy serve/config.yaml

From Python (tests, benchmarks): ``serve.run(build_app(AppArgs(checkpoint=...)), route_prefix="/")``.
Deployment options set here are defaults; ``serve/config.yaml`` overrides them per deployment.
"""

import hashlib
import os
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator
from ray.serve import Application

from serve.ingress import Ingress
from serve.model_deployment import ModelServer
from serve.requests import Limits


class AppArgs(BaseModel):
    """Arguments of ``build_app`` (``key=value`` on the ``serve run`` command line, ``args:`` in YAML)."""

    model_config = ConfigDict(extra="forbid")

    checkpoint: str = Field(..., description="checkpoint folder written by unip2.save")
    gallery: str | None = Field(None, description="converted data folder to index for /v1/retrieve/image")
    gallery_dataset: str = Field("coco_captions", description="dataset of the gallery folder to index")
    gallery_split: str = Field("test", description="split of the gallery dataset to index")
    gallery_limit: int = Field(5000, ge=1, description="most gallery images indexed")
    max_batch_size: int = Field(16, ge=1, description="largest batch per task in the model replica")
    batch_wait_timeout_s: float = Field(0.05, ge=0.0, description="most a request waits for a batch to fill")
    adaptive_wait: bool = Field(True, description="wait only while the model is busy (else always the timeout)")
    request_timeout_s: float = Field(30.0, gt=0.0, description="a model call taking longer answers 408")
    max_body_bytes: int = Field(Limits.max_body_bytes, ge=1, description="larger bodies answer 413")
    max_pixels: int = Field(Limits.max_pixels, ge=1, description="larger images (w×h) answer 413")
    max_gallery_images: int = Field(Limits.max_gallery_images, ge=1, description="uploaded gallery size limit")
    model_replicas: int = Field(1, ge=1, description="model replicas (config.yaml may autoscale instead)")
    model_num_cpus: float = Field(1.0, gt=0.0, description="CPUs reserved per model replica")
    model_num_gpus: float = Field(0.0, ge=0.0, description="GPUs per model replica (the model uses one if given)")
    ingress_num_cpus: float = Field(0.25, gt=0.0, description="CPUs reserved per ingress replica")
    max_ongoing_requests: int = Field(32, ge=1, description="requests a model replica holds at once (≥ batch)")
    max_queued_requests: int = Field(64, ge=-1, description="requests waiting for a model replica; more → 503")
    torch_threads: int | None = Field(None, ge=1, description="intra-op threads (default: the replica's CPUs)")
    warmup: bool = Field(True, description="run every task once at start-up")
    token_env: str = Field("UNIP2_SERVE_TOKEN", description="environment variable holding the bearer token")

    @field_validator("checkpoint", "gallery")
    @classmethod
    def _folder_exists(cls, value: str | None) -> str | None:
        if value is not None and not Path(value).is_dir():
            raise ValueError(f"folder not found: {value}")
        return None if value is None else str(Path(value).resolve())


def build_app(args: AppArgs) -> Application:
    """The ingress bound to a model deployment for ``args.checkpoint``.

    ``args`` is annotated with the pydantic model, so ``serve run``/``serve deploy`` validate their
    ``key=value`` / YAML arguments into it (a typed app builder).
    """
    gallery = None
    if args.gallery:
        gallery = {"folder": args.gallery, "dataset": args.gallery_dataset, "split": args.gallery_split,
                   "limit": args.gallery_limit}
    model = ModelServer.options(
        num_replicas=args.model_replicas,
        ray_actor_options={"num_cpus": args.model_num_cpus, "num_gpus": args.model_num_gpus},
        max_ongoing_requests=max(args.max_ongoing_requests, args.max_batch_size),
        max_queued_requests=args.max_queued_requests,
    ).bind(args.checkpoint, max_batch_size=args.max_batch_size, batch_wait_timeout_s=args.batch_wait_timeout_s,
           adaptive_wait=args.adaptive_wait, gallery=gallery, torch_threads=args.torch_threads, warmup=args.warmup)
    token = os.environ.get(args.token_env) or None
    limits = {"max_body_bytes": args.max_body_bytes, "max_pixels": args.max_pixels,
              "max_gallery_images": args.max_gallery_images}
    return Ingress.options(ray_actor_options={"num_cpus": args.ingress_num_cpus}).bind(
        model, args.checkpoint, limits=limits, request_timeout_s=args.request_timeout_s,
        token_sha256=hashlib.sha256(token.encode()).hexdigest() if token else None)
