"""Reading a request: multipart upload or JSON with base64, validated parameters, image checks, limits.

The fields a route takes come from its task (``serve.request_models``); reading them is the same for every
route. Both input forms give the same ``ParsedRequest``, so the same image answers the same way either way:

- ``multipart/form-data``: the image as a file field (``image``; ``images`` repeated for a gallery),
  every other parameter as a form field, lists as JSON strings (``class_names='["cat", "dog"]'``).
- ``application/json``: ``{"image": "<base64>", ...}`` (a ``data:`` URL prefix is accepted).

A route without images (``Route.images == "none"``) takes the same two forms, with fields only.

Refusals: bad body or undecodable/empty data → 400; not an image we accept → 415; missing, unknown or
mistyped fields → 422; decoded size over ``Limits.max_pixels`` → 413 (read from the header, before any
pixel is decoded); a body over ``Limits.max_body_bytes`` → 413 before it is parsed (a declared
``Content-Length`` is refused without reading a byte; a chunked body as soon as it passes the limit); no body
arriving within ``BODY_START_TIMEOUT_S`` → 503 with Retry-After (it was lost with a replica: send it again).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import json
from dataclasses import dataclass
from typing import Any

from PIL import Image, UnidentifiedImageError
from pydantic import BaseModel, ValidationError
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException
from starlette.requests import Request

from serve.errors import ApiError, validation_details
from serve.proxy_errors import RETRY_AFTER_S

ACCEPTED_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF")

BODY_START_TIMEOUT_S = 10.0
"""Most a replica waits for the first piece of a request's body. Serve's proxy forwards a request once its headers
are in and the body follows at once; none arriving means it is gone: a replica that read it died before Serve's
router heard it accept the request, so the router sent the request here without its body (the proxy hands a body
out once). The answer is 503 with Retry-After, and the client sends it again."""


@dataclass(frozen=True, kw_only=True)
class Limits:
    """Request limits of the HTTP layer."""

    max_body_bytes: int = 20 * 2**20
    """Largest request body; a larger one is refused with 413 before it is read."""
    max_pixels: int = 40_000_000
    """Largest decoded image (width × height), checked from the header: decompression bombs get 413."""
    max_gallery_images: int = 64
    """Most images uploaded with one request to a route taking many (``/v1/retrieve/image``)."""


@dataclass(frozen=True)
class ParsedRequest:
    images: list[bytes]
    """The uploaded image (one) or gallery (any number, possibly none), checked by ``inspect_image``; none for a
    route without images."""
    params: BaseModel


@dataclass(frozen=True)
class ImageField:
    """Where a route's images come from: one required ``image`` or an optional repeated ``images``."""

    name: str = "image"
    many: bool = False

    @classmethod
    def of(cls, images: str) -> "ImageField | None":
        """A route's ``images`` declaration ("one", "many", "none") → its field (None: the route takes no image)."""
        if images not in ("one", "many", "none"):
            raise ValueError(f"images: {images!r} is not one of 'one', 'many', 'none'")
        return {"one": cls("image"), "many": cls("images", many=True), "none": None}[images]


# ------------------------------------------------------------------------------------- images
def inspect_image(data: bytes, limits: Limits, field: str = "image") -> tuple[str, int, int]:
    """Check an encoded image from its header only → (format, width, height); refuse with 400/413/415.

    Full decoding (where truncation shows) happens next, in ``serve.preprocessing``, which answers 400.
    """
    if not data:
        raise ApiError(400, f"{field}: empty file")
    try:
        with Image.open(io.BytesIO(data)) as image:
            fmt, (width, height) = image.format, image.size
    except Image.DecompressionBombError as err:
        raise ApiError(413, f"{field}: image too large ({err})") from None
    except UnidentifiedImageError:
        raise ApiError(415, f"{field}: not an image (accepted: {', '.join(ACCEPTED_FORMATS)})") from None
    except Exception as err:  # PIL raises many types for malformed headers
        raise ApiError(400, f"{field}: undecodable image ({err})") from None
    if fmt not in ACCEPTED_FORMATS:
        raise ApiError(415, f"{field}: image format {fmt} not accepted (accepted: {', '.join(ACCEPTED_FORMATS)})")
    if width * height > limits.max_pixels:
        raise ApiError(413, f"{field}: {width}x{height} = {width * height} pixels, over the limit of "
                            f"{limits.max_pixels}")
    return fmt, width, height


def decode_base64(value: Any, field: str) -> bytes:
    if not isinstance(value, str):
        raise ApiError(422, f"{field}: must be a base64 string")
    if value.startswith("data:"):
        value = value.partition(",")[2]
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(400, f"{field}: not valid base64") from None


# ----------------------------------------------------------------------------------- parsing
async def read_body(request: Request, max_bytes: int, start_timeout_s: float = BODY_START_TIMEOUT_S) -> bytes:
    """The whole body, refused with 413 as soon as it is known to pass ``max_bytes``; 503 if none of it arrives
    within ``start_timeout_s`` (``BODY_START_TIMEOUT_S``: only the start is timed, a slow upload goes on).

    The body is cached on the request, so ``request.form()`` / ``request.json()`` parse it afterwards, and a
    second call returns it at once.
    """
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise ApiError(400, "invalid Content-Length header")
        if int(declared) > max_bytes:
            raise ApiError(413, f"request body of {declared} bytes is over the limit of {max_bytes} bytes")
    if getattr(request, "_body", None) is not None:
        return request._body
    chunks, size = [], 0
    stream = request.stream()
    timeout_s: float | None = start_timeout_s
    while True:
        try:
            chunk = await asyncio.wait_for(anext(stream), timeout_s)
        except StopAsyncIteration:
            break
        except asyncio.TimeoutError:
            raise ApiError(503, f"no request body arrived within {start_timeout_s:g} s; retry the request",
                           {"Retry-After": RETRY_AFTER_S}) from None
        timeout_s = None
        size += len(chunk)
        if size > max_bytes:
            raise ApiError(413, f"request body is over the limit of {max_bytes} bytes")
        chunks.append(chunk)
    request._body = b"".join(chunks)  # Starlette's own cache: form() and json() read it from here
    return request._body


async def parse_request(request: Request, params_model: type[BaseModel], image_field: ImageField | None,
                        limits: Limits) -> ParsedRequest:
    """The request's images and validated parameters, whichever of the two input forms it uses."""
    await read_body(request, limits.max_body_bytes)
    mime = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if mime == "multipart/form-data":
        images, fields = await _read_multipart(request, image_field, limits)
    elif mime == "application/json" or mime.endswith("+json"):
        images, fields = await _read_json(request, image_field)
    else:
        raise ApiError(415, f"content type {mime or '(none)'} not accepted: send multipart/form-data "
                            "or application/json")
    if image_field is not None and not image_field.many and len(images) != 1:
        message = "field required" if not images else "exactly one image expected"
        raise ApiError(422, f"{image_field.name}: {message}")
    if image_field is not None and len(images) > limits.max_gallery_images:
        raise ApiError(422, f"{image_field.name}: at most {limits.max_gallery_images} images per request")
    try:
        params = params_model.model_validate(fields)
    except ValidationError as err:
        summary, details = validation_details(err.errors())
        raise ApiError(422, summary) from None
    for index, data in enumerate(images):
        inspect_image(data, limits, image_field.name if not image_field.many else f"{image_field.name}[{index}]")
    return ParsedRequest(images=images, params=params)


async def _read_multipart(request: Request, image_field: ImageField | None, limits: Limits):
    try:
        form = await request.form(max_files=limits.max_gallery_images + 1, max_fields=64)
    except (MultiPartException, ValueError, KeyError) as err:
        raise ApiError(400, f"malformed multipart body: {err}") from None
    images: list[bytes] = []
    values: dict[str, list[str]] = {}
    try:
        for key, value in form.multi_items():
            if isinstance(value, UploadFile):
                if image_field is None:
                    raise ApiError(422, f"{key}: unexpected file field (this route takes no image)")
                if key != image_field.name:
                    raise ApiError(422, f"{key}: unexpected file field (the image goes in '{image_field.name}')")
                images.append(await value.read())
            elif image_field is not None and key == image_field.name:
                raise ApiError(422, f"{key}: must be a file upload")
            else:
                values.setdefault(key, []).append(value)
    finally:
        await form.close()
    fields: dict[str, Any] = {}
    for key, items in values.items():
        if len(items) > 1:
            fields[key] = items
        else:
            fields[key] = _form_value(items[0])
    return images, fields


def _form_value(text: str) -> Any:
    """A form field: lists (and null) arrive as JSON strings; scalars stay text for pydantic to coerce."""
    stripped = text.strip()
    if stripped.startswith("[") or stripped == "null":
        try:
            return json.loads(stripped)
        except json.JSONDecodeError:
            raise ApiError(422, f"not a valid JSON list: {stripped[:80]!r}") from None
    return text


async def _read_json(request: Request, image_field: ImageField | None):
    body = await request.body()
    try:
        fields = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ApiError(400, f"malformed JSON body: {err}") from None
    if not isinstance(fields, dict):
        raise ApiError(422, "body: must be a JSON object")
    if image_field is None:  # an image field would be an unknown field: the params model refuses it
        return [], fields
    raw = fields.pop(image_field.name, None)
    if raw is None:
        return [], fields
    if image_field.many:
        if not isinstance(raw, list):
            raise ApiError(422, f"{image_field.name}: must be a list of base64 strings")
        return [decode_base64(item, f"{image_field.name}[{i}]") for i, item in enumerate(raw)], fields
    return [decode_base64(raw, image_field.name)], fields


def json_schemas(params_model: type[BaseModel], image_field: ImageField | None) -> dict:
    """OpenAPI ``requestBody`` for a route: the same fields as JSON (base64 image) or multipart (file)."""
    schema = params_model.model_json_schema()
    properties = dict(schema.get("properties", {}))
    required = list(schema.get("required", []))
    images_json, images_form = {}, {}  # a route without images: its fields only
    if image_field is not None and image_field.many:
        images_json = {image_field.name: {"type": "array", "items": {"type": "string", "format": "byte"},
                                          "description": "gallery images, base64"}}
        images_form = {image_field.name: {"type": "array", "items": {"type": "string", "format": "binary"}}}
    elif image_field is not None:
        images_json = {image_field.name: {"type": "string", "format": "byte", "description": "the image, base64"}}
        images_form = {image_field.name: {"type": "string", "format": "binary"}}
        required = [image_field.name] + required
    form_properties = {name: ({"type": "string", "description": "a JSON list, e.g. [\"a\", \"b\"]"}
                              if _is_list(prop) else prop) for name, prop in properties.items()}
    return {"requestBody": {"required": True, "content": {
        "application/json": {"schema": {"type": "object", "required": required,
                                        "properties": {**images_json, **properties}}},
        "multipart/form-data": {"schema": {"type": "object", "required": required,
                                           "properties": {**images_form, **form_properties}}},
    }}}


def _is_list(prop: dict) -> bool:
    return prop.get("type") == "array" or any(option.get("type") == "array" for option in prop.get("anyOf", ()))
