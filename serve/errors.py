"""One JSON error shape for every refusal: ``{"error": {"code": int, "message": str}}``.

Client mistakes are 4xx with a message naming what was wrong; FastAPI's and Starlette's own errors
(404, 405, 422) and our own failures (500) are re-shaped into the same body, so a client parses one
format.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException


class ApiError(Exception):
    """A refusal with its HTTP status; raised anywhere in the ingress or the model replica.

    It crosses the Ray boundary intact (plain picklable fields), so the model replica can refuse a
    request's options (e.g. class names the task rejects) and the ingress answers with that code.
    """

    def __init__(self, code: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(code, message, headers)
        self.code = code
        self.message = message
        self.headers = headers or {}

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


def error_response(code: int, message: str, headers: dict[str, str] | None = None,
                   details: list | None = None) -> JSONResponse:
    body: dict = {"code": code, "message": message}
    if details:
        body["details"] = details
    return JSONResponse({"error": body}, status_code=code, headers=headers)


def validation_details(errors) -> tuple[str, list]:
    """Pydantic/FastAPI validation errors → (one-line summary, [{"field", "message"}])."""
    details = [{"field": ".".join(str(part) for part in err.get("loc", ()) if part != "body"),
                "message": err.get("msg", "invalid")} for err in errors]
    summary = "; ".join(f"{d['field'] or 'body'}: {d['message']}" for d in details)
    return summary or "invalid request", details


def install_error_handlers(app: FastAPI) -> None:
    """Every error the app can produce answers in the one JSON shape."""

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError):
        return error_response(exc.code, exc.message, exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        if exc.status_code == 404 and message == "Not Found":
            message = f"no route {request.method} {request.url.path}"
        elif exc.status_code == 405:
            message = f"method {request.method} not allowed on {request.url.path}"
        return error_response(exc.status_code, message, dict(exc.headers or {}))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError):
        summary, details = validation_details(exc.errors())
        return error_response(422, summary, details=details)

    @app.exception_handler(Exception)
    async def _server_error(request: Request, exc: Exception):  # our fault: still one JSON shape
        return error_response(500, f"internal error ({type(exc).__name__})")
