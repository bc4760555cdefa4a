"""Every error leaves the frontend once, here, as OpenAI's body: {"error": {message, type, param, code}}."""
from __future__ import annotations

import json
import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from nanovl.core.errors import NanoVLError

log = logging.getLogger("nanovl.frontend")


class HTTPError(NanoVLError):
    """An error with its own status, OpenAI type and headers (401, 404, 413, 429, 503, 504)."""

    def __init__(self, status: int, message: str, *, type_: str, code: str | None = None,
                 param: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message, param=param, code=code)
        self.status = status
        self.type = type_
        self.headers = headers or {}


def error_body(message: str, type_: str, param=None, code=None) -> dict:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def error_response(exc: NanoVLError) -> JSONResponse:
    return JSONResponse(error_body(exc.message, exc.type, exc.param, exc.code), status_code=exc.status,
                        headers=getattr(exc, "headers", None))


def http_error_response(exc: StarletteHTTPException) -> JSONResponse:
    """Starlette's own errors (unknown route, wrong method, a body over the limit) in OpenAI's shape."""
    return JSONResponse(error_body(str(exc.detail), "invalid_request_error", code=getattr(exc, "openai_code", None)),
                        status_code=exc.status_code, headers=getattr(exc, "headers", None))


def error_event(exc: BaseException) -> str:
    """An error after a stream has started: one SSE event in the same shape."""
    body = error_body(getattr(exc, "message", "internal error"), getattr(exc, "type", "internal_error"),
                      getattr(exc, "param", None), getattr(exc, "code", None))
    return f"data: {json.dumps(body)}\n\n"


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    first = exc.errors()[0] if exc.errors() else {}
    where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
    message = first.get("msg", "invalid request")
    if first.get("type") == "json_invalid":
        return "the request body is not valid JSON", None
    return (f"{where}: {message}" if where else message), where or None


def install(app: FastAPI) -> None:
    @app.exception_handler(NanoVLError)
    async def _nanovl_error(_: Request, exc: NanoVLError):
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError):
        message, param = _validation_message(exc)
        return JSONResponse(error_body(message, "invalid_request_error", param), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException):
        return http_error_response(exc)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        log.exception("%s: unexpected error", request.scope.get("state", {}).get("request_id", "-"))
        return JSONResponse(error_body("internal server error", "internal_error"), status_code=500)
