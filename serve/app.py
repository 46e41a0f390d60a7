"""The Serve application: ``build_app`` binds the model deployment (itself the HTTP ingress) from typed arguments.

    serve run serve.app:build_app checkpoint=runs/<run>/checkpoint
    serve run serve.app:build_app checkpoint=runs/<run>/checkpoint gallery=.cache/unip2/shapes-v2-seed0/parquet max_batch_size=32
    serve run serve.app:build_app checkpoint=runs/<run>/checkpoint min_replicas=1 max_replicas=4
    UNIP2_SERVE_TOKEN=secret serve run serve.app:build_app checkpoint=runs/<run>/checkpoint
    serve deploy serve/config.yaml

From Python (tests, benchmarks): ``serve.local_run.run_local(build_app(AppArgs(checkpoint=...)))``, which also
installs the proxy middleware (``serve.proxy_errors``).
Every deployment option derives from these arguments (replicas, resources, request limits), so one place sets
them; ``serve/config.yaml`` passes them as ``args``.
"""

import hashlib
import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from ray.serve import Application

from serve.model_deployment import ModelServer
from serve.proxy_errors import PROXY_CALLBACK, PROXY_CALLBACK_ENV
from serve.requests import Limits

# `serve run serve.app:build_app` imports this module before it starts its local Ray, which (with Serve's proxy)
# inherits this process's environment: the proxy middleware is installed with nothing exported. A cluster started
# apart sets it in `ray start` (cluster.yaml), serve/config.yaml in the controller's runtime environment.
os.environ.setdefault(PROXY_CALLBACK_ENV, PROXY_CALLBACK)

CONTROL_REQUESTS = 16
"""Serve-level room per replica beyond its task requests, for /healthz, /readyz, /v1/stats and /v1/tasks."""


class AppArgs(BaseModel):
    """Arguments of ``build_app`` (``key=value`` on the ``serve run`` command line, ``args:`` in YAML)."""

    model_config = ConfigDict(extra="forbid")

    checkpoint: str = Field(..., description="checkpoint folder written by unip2.save")
    gallery: str | None = Field(None, description="converted data folder to index for /v1/retrieve/image")
    gallery_dataset: str | None = Field(None, description="dataset of the gallery folder to index (default: the "
                                                            "ranking task's own dataset)")
    gallery_split: str = Field("test", description="split of the gallery dataset to index")
    gallery_limit: int = Field(5000, ge=1, description="most gallery images indexed")
    max_batch_size: int = Field(16, ge=1, description="largest batch per route in a replica")
    batch_wait_timeout_s: float = Field(0.05, ge=0.0, description="most a request waits for a batch to fill")
    adaptive_wait: bool = Field(True, description="wait only while the model is busy (else always the timeout)")
    request_timeout_s: float = Field(30.0, gt=0.0, description="decoding, queueing and computing a request "
                                                                "taking longer answers 408")
    max_body_bytes: int = Field(Limits.max_body_bytes, ge=1, description="larger bodies answer 413")
    max_pixels: int = Field(Limits.max_pixels, ge=1, description="larger images (w×h) answer 413")
    max_gallery_images: int = Field(Limits.max_gallery_images, ge=1, description="uploaded gallery size limit")
    min_replicas: int = Field(1, ge=1, description="replicas at start, and the fewest when autoscaling")
    max_replicas: int | None = Field(None, ge=1, description="autoscale up to this many replicas (default: "
                                                               "min_replicas, a fixed count)")
    target_ongoing_requests: float = Field(16.0, gt=0.0, description="autoscaling adds replicas above this many "
                                                                     "requests per replica")
    model_num_cpus: float = Field(1.0, gt=0.0, description="CPUs per replica for the model (its torch threads)")
    model_num_gpus: float = Field(0.0, ge=0.0, description="GPUs per replica (the model uses one if given)")
    ingress_num_cpus: float = Field(0.25, gt=0.0, description="CPUs per replica for HTTP and decoding, added to "
                                                              "model_num_cpus")
    decode_threads: int = Field(2, ge=1, description="threads per replica decoding request images")
    max_ongoing_requests: int = Field(32, ge=1, description="task requests a replica works on at once: read, "
                                                            "decoded, queued or in a batch (≥ max_batch_size)")
    max_queued_requests: int = Field(64, ge=-1, description="task requests waiting in a replica for one of those; "
                                                            "more → 503 with Retry-After (-1: no limit)")
    torch_threads: int | None = Field(None, ge=1, description="intra-op threads (default: model_num_cpus, "
                                                              "rounded down, at least 1)")
    warmup: bool = Field(True, description="run every route once at start-up")
    precision: Literal["auto", "bf16", "fp32"] = Field(
        "auto", description="bf16 autocast or fp32, as train.precision (auto: bf16 where the hardware has it)")
    access_log: bool = Field(True, description="log every request in the replica's log (Serve's access log)")
    token_env: str = Field("UNIP2_SERVE_TOKEN", description="environment variable holding the bearer token")

    @model_validator(mode="after")
    def _replica_range(self) -> "AppArgs":
        if self.max_replicas is not None and self.max_replicas < self.min_replicas:
            raise ValueError(f"max_replicas ({self.max_replicas}) must be >= min_replicas ({self.min_replicas})")
        return self

    @field_validator("checkpoint", "gallery")
    @classmethod
    def _folder_exists(cls, value: str | None) -> str | None:
        if value is not None and not Path(value).is_dir():
            raise ValueError(f"folder not found: {value}")
        return None if value is None else str(Path(value).resolve())


def build_app(args: AppArgs) -> Application:
    """The model deployment for ``args.checkpoint``, serving HTTP itself (one hop from Serve's proxy).

    ``args`` is annotated with the pydantic model, so ``serve run``/``serve deploy`` validate their
    ``key=value`` / YAML arguments into it (a typed app builder).
    """
    gallery = None
    if args.gallery:
        gallery = {"folder": args.gallery, "dataset": args.gallery_dataset, "split": args.gallery_split,
                   "limit": args.gallery_limit}
    token = os.environ.get(args.token_env) or None
    limits = {"max_body_bytes": args.max_body_bytes, "max_pixels": args.max_pixels,
              "max_gallery_images": args.max_gallery_images}
    max_ongoing = max(args.max_ongoing_requests, args.max_batch_size)
    # The replica refuses its own overflow (JSON 503 + Retry-After, serve.admission), so Serve lets it see that
    # many; a burst beyond waits in Serve's proxy for a free replica.
    replicas: dict = {"num_replicas": args.min_replicas}
    if args.max_replicas is not None and args.max_replicas > args.min_replicas:
        replicas = {"autoscaling_config": {"min_replicas": args.min_replicas, "max_replicas": args.max_replicas,
                                           "target_ongoing_requests": args.target_ongoing_requests}}
    return ModelServer.options(
        **replicas,
        ray_actor_options={"num_cpus": args.model_num_cpus + args.ingress_num_cpus, "num_gpus": args.model_num_gpus},
        max_ongoing_requests=max_ongoing + max(args.max_queued_requests, 0) + CONTROL_REQUESTS,
        max_queued_requests=-1,
        logging_config={"enable_access_log": args.access_log},
    ).bind(args.checkpoint, limits=limits, request_timeout_s=args.request_timeout_s,
           token_sha256=hashlib.sha256(token.encode()).hexdigest() if token else None,
           max_batch_size=args.max_batch_size, batch_wait_timeout_s=args.batch_wait_timeout_s,
           adaptive_wait=args.adaptive_wait, max_ongoing_requests=max_ongoing,
           max_queued_requests=args.max_queued_requests, gallery=gallery,
           torch_threads=args.torch_threads or max(1, int(args.model_num_cpus)), decode_threads=args.decode_threads,
           warmup=args.warmup, precision=args.precision)
