"""Client mistakes get a 4xx with the one JSON error body, never a 5xx; limits, token, timeout, overload.

The app here runs with a bearer token and small limits (body, pixels, gallery, queue) so every refusal
can be provoked with small requests.
"""

from __future__ import annotations

import base64
import io
import json
import os
import socket
import struct
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlparse

import pytest
import requests
from PIL import Image

APP = "serve-bad-input"
TOKEN_ENV = "UNIP2_SERVE_TEST_TOKEN"
TOKEN = "test-token-7f3a"
MAX_BODY = 1_000_000
MAX_PIXELS = 1_000_000


@pytest.fixture(scope="module")
def base_url(ray_local, tiny_checkpoint):
    from serve.app import AppArgs, build_app
    from serve.local_run import run_local, stop_local

    os.environ[TOKEN_ENV] = TOKEN  # read by build_app in this process
    try:
        args = AppArgs(checkpoint=str(tiny_checkpoint), token_env=TOKEN_ENV, max_body_bytes=MAX_BODY,
                       max_pixels=MAX_PIXELS, max_gallery_images=3, model_num_cpus=0.5, ingress_num_cpus=0.25,
                       max_batch_size=2, max_ongoing_requests=2, max_queued_requests=2,
                       warmup=False)
        app = build_app(args)
    finally:
        del os.environ[TOKEN_ENV]
    url = run_local(app, name=APP)
    yield url
    stop_local()


@pytest.fixture(scope="module")
def client(base_url) -> requests.Session:
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {TOKEN}"
    return session


def encoded(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


JPEG = encoded(Image.new("RGB", (160, 120), (200, 30, 30)).rotate(10, expand=True), "JPEG")
PNG_TOO_MANY_PIXELS = encoded(Image.new("1", (1200, 1000)), "PNG")  # 1.2 M pixels in a few hundred bytes


def png_header_only(width: int, height: int) -> bytes:
    """A PNG declaring width × height pixels with almost no data: a decompression bomb's header."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + chunk(b"IEND", b""))


def image_part(data: bytes, name: str = "image"):
    return (name, ("upload", data, "application/octet-stream"))


def form(file: bytes | None = JPEG, **fields: str) -> dict:
    """multipart/form-data request kwargs: the image file (unless None) and text fields."""
    parts = [image_part(file)] if file is not None else []
    return {"files": parts + [(key, (None, value)) for key, value in fields.items()]}


def as_json(body) -> dict:
    return {"json": body}


def raw(body: bytes, content_type: str) -> dict:
    return {"data": body, "headers": {"Content-Type": content_type}}


B64 = base64.b64encode(JPEG).decode()
GALLERY_OF_4 = {"files": [image_part(JPEG, "images")] * 4 + [("text", (None, "a red square"))]}


class ChunkedOverLimit:
    """A body without Content-Length (sent chunked), larger than the limit; iterable more than once."""

    def __iter__(self):
        return (b"x" * 65536 for _ in range(MAX_BODY // 65536 + 2))


# (name, method, path, request kwargs, expected status)
MALFORMED = [
    ("no body", "POST", "/v1/classify", {}, 415),
    ("text/plain body", "POST", "/v1/classify", raw(b"hello", "text/plain"), 415),
    ("multipart without image", "POST", "/v1/classify", form(None, top_k="3"), 422),
    ("empty image file", "POST", "/v1/classify", form(b""), 400),
    ("text file as image", "POST", "/v1/detect", form(b"just some text, not pixels"), 415),
    ("truncated jpeg", "POST", "/v1/classify", form(JPEG[: len(JPEG) * 2 // 3]), 400),
    ("jpeg header only", "POST", "/v1/caption", form(JPEG[:300]), 400),
    ("image format not accepted (PPM)", "POST", "/v1/classify", form(encoded(Image.new("RGB", (8, 8)), "PPM")), 415),
    ("image as a text field", "POST", "/v1/classify", form(None, image="not a file"), 422),
    ("two images where one is expected", "POST", "/v1/classify", {"files": [image_part(JPEG)] * 2}, 422),
    ("malformed JSON", "POST", "/v1/classify", raw(b'{"image": ', "application/json"), 400),
    ("JSON array body", "POST", "/v1/classify", as_json([1, 2, 3]), 422),
    ("JSON without image", "POST", "/v1/classify", as_json({"top_k": 3}), 422),
    ("JSON image not base64", "POST", "/v1/classify", as_json({"image": "%%% not base64 %%%"}), 400),
    ("JSON image is a number", "POST", "/v1/classify", as_json({"image": 12345}), 422),
    ("top_k not a number", "POST", "/v1/classify", form(top_k="many"), 422),
    ("top_k zero", "POST", "/v1/classify", as_json({"image": B64, "top_k": 0}), 422),
    ("unknown field", "POST", "/v1/classify", form(colour="red"), 422),
    ("class_names not a JSON list", "POST", "/v1/detect", form(class_names="[cat"), 422),
    ("class_names empty", "POST", "/v1/detect", as_json({"image": B64, "class_names": []}), 422),
    ("score_threshold above 1", "POST", "/v1/detect", form(score_threshold="2"), 422),
    ("beam_size too large", "POST", "/v1/caption", form(beam_size="100"), 422),
    ("texts missing", "POST", "/v1/retrieve/text", form(), 422),
    ("texts has an empty text", "POST", "/v1/retrieve/text", form(texts='["a", " "]'), 422),
    ("text missing", "POST", "/v1/retrieve/image", {"files": [image_part(JPEG, "images")]}, 422),
    ("gallery over the limit", "POST", "/v1/retrieve/image", GALLERY_OF_4, 422),
    ("no gallery indexed and none uploaded", "POST", "/v1/retrieve/image", as_json({"text": "a red square"}), 422),
    ("body over the limit", "POST", "/v1/classify", form(b"\xff" * (MAX_BODY + 10)), 413),
    ("chunked body over the limit", "POST", "/v1/classify", raw(ChunkedOverLimit(), "application/json"), 413),
    ("too many pixels", "POST", "/v1/segment", form(PNG_TOO_MANY_PIXELS), 413),
    ("decompression bomb header", "POST", "/v1/classify", form(png_header_only(60000, 60000)), 413),
    ("bad client deadline", "POST", "/v1/classify", {**form(), "headers": {"X-Request-Timeout": "soon"}}, 400),
    ("unknown route", "GET", "/v1/nothing-here", {}, 404),
    ("unknown POST route", "POST", "/v2/classify", form(), 404),
    ("wrong method on a task", "GET", "/v1/classify", {}, 405),
    ("wrong method on health", "DELETE", "/healthz", {}, 405),
]


def assert_error(response, status: int) -> None:
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/json"), response.headers
    error = response.json()["error"]
    assert error["code"] == status and isinstance(error["message"], str) and error["message"]


@pytest.mark.parametrize("name,method,path,kwargs,status", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_request_is_a_4xx_with_a_json_error(client, base_url, name, method, path, kwargs, status):
    assert len(MALFORMED) >= 15
    assert_error(client.request(method, base_url + path, timeout=60, **kwargs), status)


def test_declared_oversize_body_is_refused_before_it_is_sent(base_url):
    """Content-Length over the limit: 413 comes back although not one body byte was sent."""
    address = urlparse(base_url)
    with socket.create_connection((address.hostname, address.port), timeout=30) as sock:
        sock.sendall((f"POST /v1/classify HTTP/1.1\r\nHost: {address.netloc}\r\nAuthorization: Bearer {TOKEN}\r\n"
                      f"Content-Type: application/json\r\nContent-Length: {50 * MAX_BODY}\r\n\r\n").encode())
        answer = b""
        while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
    head, _, body = answer.decode("latin-1").partition("\r\n\r\n")
    assert head.startswith("HTTP/1.1 413"), head
    assert json.loads(body)["error"]["code"] == 413


def test_token_guards_everything_but_health(base_url):
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
        response = requests.post(base_url + "/v1/classify", files=[image_part(JPEG)], headers=headers, timeout=60)
        assert_error(response, 401)
        assert response.headers["www-authenticate"] == "Bearer"
        assert_error(requests.get(base_url + "/v1/tasks", headers=headers, timeout=60), 401)
    assert requests.get(base_url + "/healthz", timeout=60).status_code == 200
    assert requests.get(base_url + "/readyz", timeout=60).status_code == 200


def test_request_over_its_deadline_is_a_408(client, base_url):
    response = client.post(base_url + "/v1/caption", files=[image_part(JPEG)],
                           headers={"X-Request-Timeout": "0.001"}, timeout=60)
    assert_error(response, 408)


def test_overload_past_the_queue_is_a_503_with_retry_after(client, base_url):
    def caption(_):
        return client.post(base_url + "/v1/caption", files=[image_part(JPEG), ("beam_size", (None, "4"))], timeout=120)

    with ThreadPoolExecutor(max_workers=16) as pool:
        responses = list(pool.map(caption, range(16)))
    codes = sorted(r.status_code for r in responses)
    assert set(codes) <= {200, 503} and 503 in codes and 200 in codes, codes
    for response in responses:
        if response.status_code == 503:
            assert_error(response, 503)
            assert int(response.headers["retry-after"]) >= 1


def test_app_is_healthy_after_the_battery(client, base_url):
    time.sleep(0.5)
    assert requests.get(base_url + "/readyz", timeout=60).status_code == 200
    good = client.post(base_url + "/v1/classify", files=[image_part(JPEG), ("top_k", (None, "2"))], timeout=60)
    assert good.status_code == 200 and len(good.json()["top_names"]) == 2
    as_json = client.post(base_url + "/v1/classify", json={"image": base64.b64encode(JPEG).decode(), "top_k": 2},
                          timeout=60)
    assert as_json.json() == good.json()
    assert json.loads(requests.get(base_url + "/healthz", timeout=60).text) == {"status": "ok"}
