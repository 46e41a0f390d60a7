"""The proxy middleware in plain ASGI (no Ray started): a request left without a response gets the app's JSON
503 with Retry-After; everything an app answered passes through byte for byte; a response already started
is never rewritten. Plus the callback, loaded and checked the way Serve's proxy does it."""

from __future__ import annotations

import asyncio
import json

import pytest
from starlette.responses import JSONResponse, PlainTextResponse

from serve.errors import error_response
from serve.proxy_errors import (MESSAGE, PROXY_CALLBACK, PROXY_CALLBACK_ENV, RETRY_AFTER_S, ReplicaLostAnswer,
                                proxy_middlewares)


def http_scope(headers: list[tuple[bytes, bytes]] | None = None) -> dict:
    return {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
            "path": "/v1/classify", "raw_path": b"/v1/classify", "query_string": b"", "root_path": "",
            "headers": list(headers or []), "client": ("127.0.0.1", 5000), "server": ("127.0.0.1", 8000)}


def call(app, scope: dict | None = None) -> list[dict]:
    """Run ``app`` on one request; returns the ASGI messages it sent to the server."""
    sent: list[dict] = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    asyncio.run(app(scope or http_scope(), receive, send))
    return sent


def status_headers_body(messages: list[dict]) -> tuple[int, dict[str, str], bytes]:
    start, *bodies = messages
    assert start["type"] == "http.response.start" and all(m["type"] == "http.response.body" for m in bodies)
    assert not bodies[-1].get("more_body", False)
    headers = {k.decode(): v.decode() for k, v in start["headers"]}
    return start["status"], headers, b"".join(m["body"] for m in bodies)


def assert_replica_lost_answer(messages: list[dict]) -> dict[str, str]:
    status, headers, body = status_headers_body(messages)
    assert status == 503
    assert headers["retry-after"] == RETRY_AFTER_S and int(RETRY_AFTER_S) >= 1
    assert headers["content-type"] == "application/json"
    assert json.loads(body) == {"error": {"code": 503, "message": MESSAGE}}
    assert "lost" in MESSAGE and "retry" in MESSAGE
    return headers


async def answers_nothing(scope, receive, send):  # what Serve's proxy does when the replica died
    return None


async def raises_before_starting(scope, receive, send):
    raise RuntimeError("the proxy failed before any response")


def test_a_request_left_without_a_response_gets_the_json_503():
    assert_replica_lost_answer(call(ReplicaLostAnswer(answers_nothing)))


def test_an_app_that_raises_before_starting_gets_the_json_503(caplog):
    with caplog.at_level("WARNING", logger="ray.serve"):
        assert_replica_lost_answer(call(ReplicaLostAnswer(raises_before_starting)))
    assert "before a response started" in caplog.text and "RuntimeError" in caplog.text


@pytest.mark.parametrize("answer", [
    JSONResponse({"predictions": [{"label": "red circle", "score": 0.9}]}),
    error_response(422, "top_k: must be >= 1"),
    error_response(413, "body over 20971520 bytes"),
    PlainTextResponse("Path '/nope' not found.", status_code=404),  # Serve's proxy's own 404
    error_response(503, "server overloaded: too many queued requests", {"Retry-After": "1"}),
], ids=["200", "422", "413", "proxy-404", "app-503"])
def test_an_answer_the_app_gave_passes_through_byte_for_byte(answer):
    assert call(ReplicaLostAnswer(answer)) == call(answer)


def test_a_response_already_started_is_never_rewritten():
    async def fails_mid_body(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"100")]})
        await send({"type": "http.response.body", "body": b"{\"predictions\":", "more_body": True})
        raise ConnectionError("replica lost mid-stream")

    async def stops_after_start(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})

    sent: list[dict] = []

    async def send(message):
        sent.append(message)

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    with pytest.raises(ConnectionError):  # the server ends the connection: the client sees a broken body
        asyncio.run(ReplicaLostAnswer(fails_mid_body)(http_scope(), receive, send))
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]
    assert call(ReplicaLostAnswer(stops_after_start)) == [{"type": "http.response.start", "status": 200,
                                                          "headers": []}]


@pytest.mark.parametrize("scope_type", ["websocket", "lifespan"])
def test_other_scopes_pass_through_untouched(scope_type):
    assert call(ReplicaLostAnswer(answers_nothing), {"type": scope_type, "headers": []}) == []


def test_the_answer_echoes_the_request_id():
    scope = http_scope([(b"x-request-id", b"abc-123")])
    assert assert_replica_lost_answer(call(ReplicaLostAnswer(answers_nothing), scope))["x-request-id"] == "abc-123"


def test_serves_proxy_loads_the_callback_and_wraps_its_app_with_it():
    from ray.serve._private import constants
    from ray.serve._private.http_util import _apply_middlewares, validate_http_proxy_callback_return
    from ray.serve._private.utils import call_function_from_import_path

    assert hasattr(constants, PROXY_CALLBACK_ENV)  # the variable this Ray's proxy reads
    middlewares = validate_http_proxy_callback_return(call_function_from_import_path(PROXY_CALLBACK))
    assert [m.cls for m in middlewares] == [m.cls for m in proxy_middlewares()] == [ReplicaLostAnswer]
    # As the proxy builds its server's app: Serve's request-id middleware inside, ours outside it.
    headers = assert_replica_lost_answer(call(_apply_middlewares(answers_nothing, middlewares)))
    assert headers["x-request-id"]  # the id Serve gave the request, as on its other answers
    answer = JSONResponse({"ok": True})
    status, headers, body = status_headers_body(call(_apply_middlewares(answer, middlewares)))
    assert (status, body) == (200, b'{"ok":true}') and headers["x-request-id"]
