"""Routes from the registry, without Ray: request models from a route's fields dataclass, routes without images,
reading a body (its start timed), the admission limit and the timing header."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field

import pytest
from pydantic import ValidationError
from starlette.requests import Request

from serve.errors import ApiError
from serve.request_models import params_model, warm_up_params
from serve.requests import ImageField, Limits, json_schemas, parse_request, read_body
from unip2.tasks.routes import Route


@dataclass
class FillRequest:
    """A text-only route's fields, like the ones a language-modelling task declares."""

    text: str = field(default="", metadata={"required": True, "min_length": 1, "max_length": 20,
                                            "description": "text with masks"})
    top_k: int = field(default=5, metadata={"ge": 1, "le": 50})
    hints: list[str] | None = field(default=None, metadata={"min_length": 1, "max_length": 3,
                                                            "item_max_length": 8})
    temperature: float | None = field(default=None, metadata={"ge": 0.0})


TEXT_ONLY = Route("/v1/fill_mask", "Fill the masks", FillRequest, images="none")


def test_every_registered_route_gets_a_request_model_and_docs():
    from serve.ingress import task_routes

    routes = task_routes()
    assert routes, "the registry declares no route"
    for path, (task, route) in routes.items():
        model = params_model(route)
        schema = json_schemas(model, ImageField.of(route.images))["requestBody"]["content"]
        assert set(schema) == {"application/json", "multipart/form-data"}, path
        image = {"one": "image", "many": "images", "none": None}[route.images]
        assert (image in schema["application/json"]["schema"]["properties"]) is (image is not None)
        assert callable(getattr(task, route.answer)), f"{task.name}.{route.answer}"
        warm_up_params(model)  # a valid synthetic request exists for every route


def test_request_model_applies_the_field_metadata():
    model = params_model(TEXT_ONLY)
    assert model.model_validate({"text": "  a <mask> b  "}).model_dump(exclude_none=True) == {
        "text": "a <mask> b", "top_k": 5}
    assert model.model_validate({"text": "x", "hints": [" ab ", "c"]}).hints == ["ab", "c"]
    refused = [{}, {"text": "   "}, {"text": "x" * 21}, {"text": "x", "top_k": 0}, {"text": "x", "top_k": 51},
               {"text": "x", "hints": []}, {"text": "x", "hints": ["a"] * 4}, {"text": "x", "hints": [" "]},
               {"text": "x", "hints": ["y" * 9]}, {"text": "x", "temperature": -1}, {"text": "x", "colour": "red"}]
    for fields in refused:
        with pytest.raises(ValidationError):
            model.model_validate(fields)
    assert model.model_json_schema()["required"] == ["text"]
    assert warm_up_params(model) == {"text": "warm up", "top_k": 5}


def test_wrong_field_metadata_is_refused_naming_the_field():
    @dataclass
    class Bad:
        name: str = field(default="", metadata={"item_max_length": 5})

    @dataclass
    class Typo:
        top_k: int = field(default=1, metadata={"greater_equal": 1})

    with pytest.raises(ValueError, match=r"Bad\.name: item_max_length applies to list\[str\]"):
        params_model(Route("/x", "x", Bad))
    with pytest.raises(ValueError, match=r"Typo\.top_k: unknown metadata \['greater_equal'\]"):
        params_model(Route("/x", "x", Typo))
    with pytest.raises(ValueError, match="images"):
        ImageField.of("several")


def http_request(body: bytes, content_type: str) -> Request:
    messages = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive():
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    headers = [(b"content-type", content_type.encode()), (b"content-length", str(len(body)).encode())]
    return Request({"type": "http", "method": "POST", "path": TEXT_ONLY.path, "headers": headers,
                    "query_string": b""}, receive)


def parse(body: bytes, content_type: str):
    return asyncio.run(parse_request(http_request(body, content_type), params_model(TEXT_ONLY),
                                     ImageField.of(TEXT_ONLY.images), Limits()))


def test_a_route_without_images_reads_fields_only_in_either_form():
    parsed = parse(json.dumps({"text": "the <mask> sat"}).encode(), "application/json")
    assert parsed.images == [] and parsed.params.text == "the <mask> sat"
    boundary = "b0undary"
    form = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"text\"\r\n\r\nthe <mask> sat\r\n"
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"top_k\"\r\n\r\n3\r\n--{boundary}--\r\n")
    parsed = parse(form.encode(), f"multipart/form-data; boundary={boundary}")
    assert parsed.images == [] and parsed.params.model_dump(exclude_none=True) == {"text": "the <mask> sat",
                                                                                   "top_k": 3}
    with pytest.raises(ApiError) as refused:  # an image sent anyway is an unknown field
        parse(json.dumps({"text": "x", "image": "aGk="}).encode(), "application/json")
    assert refused.value.code == 422 and "image" in refused.value.message
    upload = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a.png\"\r\n"
              f"Content-Type: image/png\r\n\r\nxx\r\n--{boundary}--\r\n")
    with pytest.raises(ApiError) as refused:
        parse(upload.encode(), f"multipart/form-data; boundary={boundary}")
    assert refused.value.code == 422 and "takes no image" in refused.value.message


def delayed_body(chunks: list[tuple[float, bytes]]) -> Request:
    """A request whose body arrives as ``(seconds to wait, bytes)`` pieces; then it waits for ever."""
    pending = list(chunks)

    async def receive():
        if not pending:
            await asyncio.Event().wait()  # what a replica sees when its body went to a replica that died
        delay, body = pending.pop(0)
        await asyncio.sleep(delay)
        return {"type": "http.request", "body": body, "more_body": bool(pending)}

    return Request({"type": "http", "method": "POST", "path": TEXT_ONLY.path, "headers": [],
                    "query_string": b""}, receive)


def test_a_body_that_never_starts_is_a_503_with_retry_after():
    with pytest.raises(ApiError) as refused:
        asyncio.run(read_body(delayed_body([]), 1000, start_timeout_s=0.2))
    assert refused.value.code == 503 and refused.value.headers["Retry-After"] == "1"
    assert "no request body arrived within 0.2 s" in refused.value.message and "retry" in refused.value.message
    # Only the start is timed: a body that starts in time may take longer than that to finish.
    slow = delayed_body([(0.05, b"ab"), (0.3, b"cd"), (0.3, b"")])
    assert asyncio.run(read_body(slow, 1000, start_timeout_s=0.2)) == b"abcd"
    with pytest.raises(ApiError) as too_big:  # the size limit still holds past the start
        asyncio.run(read_body(delayed_body([(0.0, b"ab"), (0.0, b"cdef")]), 4, start_timeout_s=0.2))
    assert too_big.value.code == 413


def test_admission_refuses_past_ongoing_plus_queued_with_retry_after():
    from serve.admission import Admission

    async def scenario():
        admission = Admission(ongoing=2, queued=1)
        release = asyncio.Event()
        outcomes = []

        async def request():
            try:
                async with admission.slot():
                    await release.wait()
                outcomes.append("answered")
            except ApiError as err:
                outcomes.append((err.code, err.headers.get("Retry-After")))

        tasks = [asyncio.create_task(request()) for _ in range(5)]
        await asyncio.sleep(0.01)
        assert admission.stats() == {"ongoing": 2, "waiting": 1, "refused": 2, "max_ongoing": 2, "max_queued": 1}
        release.set()
        await asyncio.gather(*tasks)
        return outcomes

    outcomes = asyncio.run(scenario())
    assert sorted(map(str, outcomes)) == sorted(map(str, [(503, "1"), (503, "1"), "answered", "answered",
                                                          "answered"]))


def test_timing_header_round_trip():
    import time

    from serve.timing import RequestTiming, parse_header

    timing = RequestTiming()
    timing.mark("parse")
    middle = time.perf_counter()
    timing.mark("queue", middle)
    timing.mark("model")
    parts = parse_header(timing.header())
    assert list(parts) == ["parse", "queue", "model", "replica"]
    assert all(value >= 0 for value in parts.values())
    assert parts["replica"] == pytest.approx(sum(v for k, v in parts.items() if k != "replica"), abs=0.05)
