"""The bus's error codes as OpenAI-shaped HTTP errors: ``{"error": {"message", "type",
"param", "code"}}`` with the status an OpenAI client expects for them (its SDK raises
BadRequestError for 400, AuthenticationError for 401, NotFoundError for 404,
RateLimitError for 429 and InternalServerError for 5xx)."""

from __future__ import annotations

import math
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from model_manager import errors as bus

#: bus error code -> (HTTP status, OpenAI error type). Anything unlisted is a 500.
STATUS: dict[str, tuple[int, str]] = {
    **{code: (400, "invalid_request_error") for code in (
        bus.BAD_REQUEST, bus.UNKNOWN_ACTION, bus.MISSING_FIELD, bus.INVALID_FIELD, bus.INVALID_AUDIO,
        bus.TOO_MANY_ITEMS, bus.UNKNOWN_VOICE, bus.DUPLICATE_REQUEST_ID, bus.CANCELLED)},
    **{code: (413, "invalid_request_error") for code in (
        bus.AUDIO_TOO_LONG, bus.TEXT_TOO_LONG, bus.MESSAGE_TOO_LARGE)},
    bus.UNKNOWN_MODEL: (404, "invalid_request_error"),
    bus.NOT_FOUND: (404, "invalid_request_error"),
    bus.OVERLOADED: (429, "rate_limit_error"),
    bus.MODEL_UNAVAILABLE: (503, "server_error"),
    bus.SHUTTING_DOWN: (503, "server_error"),
    bus.BUS_UNAVAILABLE: (503, "server_error"),
    bus.TIMEOUT: (504, "server_error"),
    bus.NO_REPLY: (504, "server_error"),
}
INVALID_API_KEY = "invalid_api_key"
REQUEST_TOO_LARGE = "request_too_large"
#: Seconds a client should wait after a 503 before trying again.
UNAVAILABLE_RETRY_AFTER_S = 2


class ApiError(Exception):
    """An error reply: HTTP status, OpenAI type, the bus code, a message and headers."""

    def __init__(self, status: int, code: str, message: str, error_type: str = "invalid_request_error",
                 headers: dict[str, str] | None = None, param: str | None = None) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.message = status, code, message
        self.error_type, self.headers, self.param = error_type, headers or {}, param

    @classmethod
    def from_bus(cls, error: dict[str, Any]) -> ApiError:
        """From a bus reply's `error` map; `overloaded` carries Retry-After (from its
        retry_after_ms), and 503s say when to come back too."""
        code = str(error.get("code", bus.INTERNAL))
        status, error_type = STATUS.get(code, (500, "server_error"))
        headers = {}
        if code == bus.OVERLOADED:
            headers["Retry-After"] = str(max(1, math.ceil(float(error.get("retry_after_ms") or 1000) / 1000)))
        elif status == 503:
            headers["Retry-After"] = str(UNAVAILABLE_RETRY_AFTER_S)
        return cls(status, code, str(error.get("message", code)), error_type, headers)

    @classmethod
    def from_bus_error(cls, exc: bus.BusError) -> ApiError:
        return cls.from_bus(exc.to_wire())

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.error_type, "param": self.param,
                          "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


async def api_error_handler(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return exc.response()


async def bus_error_handler(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, bus.BusError)
    return ApiError.from_bus_error(exc).response()


async def validation_error_handler(_request: Request, exc: Exception) -> JSONResponse:
    """FastAPI's 422 for a missing or mistyped field becomes OpenAI's 400, naming the field."""
    assert isinstance(exc, RequestValidationError)
    first = exc.errors()[0] if exc.errors() else {}
    where = [str(part) for part in first.get("loc", ()) if part not in ("body", "query", "header")]
    param = ".".join(where) or None
    message = f"{param}: {first.get('msg', 'invalid value')}" if param else str(first.get("msg", exc))
    return ApiError(400, bus.INVALID_FIELD, message, param=param).response()


async def http_error_handler(_request: Request, exc: Exception) -> JSONResponse:
    """Starlette's own errors (unparsable multipart, unknown route, wrong method) in the same shape."""
    assert isinstance(exc, StarletteHTTPException)
    codes = {400: bus.BAD_REQUEST, 404: bus.NOT_FOUND, 413: REQUEST_TOO_LARGE}
    code = codes.get(exc.status_code, "http_error")
    error_type = "invalid_request_error" if exc.status_code < 500 else "server_error"
    return ApiError(exc.status_code, code, str(exc.detail), error_type, dict(exc.headers or {})).response()
