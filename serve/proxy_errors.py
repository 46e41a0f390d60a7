"""Serve's HTTP proxy answers a request whose model replica was lost with the app's JSON 503 and Retry-After.

A replica killed while it holds requests ends them in the proxy without a response: Ray Serve writes its own
answer only for 408/429/503, and a lost replica is an error it logs and drops, so uvicorn then sends a
plain-text 500. ``ReplicaLostAnswer`` wraps the proxy's ASGI app: an HTTP request the app returns from (or
raises out of) without having started a response gets ``{"error": {"code": 503, "message": ...}}`` with
``Retry-After``, the app's one error shape, saying to retry. Anything the app started to answer, and every
non-HTTP scope, passes through untouched.

Ray Serve installs it through its proxy callback, an environment variable the proxy process reads at start:

    RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH=serve.proxy_errors:proxy_middlewares

``serve.app`` sets it when imported, so ``serve run serve.app:build_app`` starts its local Ray with it (nothing to
export); ``serve.local_run`` passes it to the Serve
controller, whose proxies inherit it; ``serve/config.yaml`` sets it as ``controller_options`` (for ``serve
deploy`` and ``serve run`` of that file); the cluster files export it in ``ray start`` on every node. The
project must be importable where a proxy runs (it is: PYTHONPATH, ``serve run``'s working folder, or installed).
"""

from __future__ import annotations

import logging

from starlette.middleware import Middleware
from starlette.types import ASGIApp, Receive, Scope, Send

from serve.errors import error_response

PROXY_CALLBACK_ENV = "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH"
PROXY_CALLBACK = "serve.proxy_errors:proxy_middlewares"
"""The value of ``PROXY_CALLBACK_ENV`` that installs this module's middleware in Serve's proxy."""

RETRY_AFTER_S = "1"
"""Seconds before retrying: the lost replica is out of the proxy's routing already, so a retry goes to a live
replica (or waits in the proxy for the replacement); one second is the smallest whole delay that is not 0."""

MESSAGE = "the model replica holding this request was lost before it answered; retry the request"

logger = logging.getLogger("ray.serve")  # the proxy's own log (its file under the session's logs/serve)


class ReplicaLostAnswer:
    """Pure ASGI middleware: a JSON 503 with Retry-After for an HTTP request left without a response."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # websockets and lifespan: nothing to rewrite
            await self.app(scope, receive, send)
            return
        started = False

        async def send_watching(message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, send_watching)
        except Exception:
            if started:  # the status is on the wire: only the server can end the response
                raise
            logger.warning("request failed before a response started; answering 503", exc_info=True)
        if not started:
            await answer_replica_lost(scope, receive, send)


async def answer_replica_lost(scope: Scope, receive: Receive, send: Send) -> None:
    headers = {"Retry-After": RETRY_AFTER_S}
    # Serve's request id middleware (inside this one) put the id in the request headers; echo it as it does.
    request_id = dict(scope.get("headers") or ()).get(b"x-request-id")
    if request_id:
        headers["X-Request-ID"] = request_id.decode("latin-1")
    await error_response(503, MESSAGE, headers)(scope, receive, send)


def proxy_middlewares() -> list[Middleware]:
    """Ray Serve's proxy callback (``PROXY_CALLBACK``): the middlewares wrapping the proxy's ASGI app."""
    return [Middleware(ReplicaLostAnswer)]
