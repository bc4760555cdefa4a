"""Per request, before any route: a request id, the API key, the body-size limit; after it: one log line and
the request counter. A plain ASGI middleware: it sees the end of a streamed response, which is when a stream's
log line can carry its token counts."""
from __future__ import annotations

import hmac
import logging
import time
import uuid

from starlette.exceptions import HTTPException as StarletteHTTPException

from .errors import HTTPError, error_response, http_error_response
from .metrics import Metrics
from .settings import Settings

log = logging.getLogger("nanovl.frontend")
# Open without the API key: probes, scrapers, the API's description.
OPEN_PATHS = frozenset({"/v1/health/live", "/v1/health/ready", "/v1/metrics", "/metrics", "/v1/version",
                        "/v1/metadata", "/docs", "/docs/oauth2-redirect", "/openapi.json", "/redoc"})


class BodyTooLarge(StarletteHTTPException):
    """Raised while the body is read, so FastAPI passes it through as it is (it turns others into 400s)."""
    openai_code = "request_too_large"

    def __init__(self, limit: int):
        super().__init__(413, f"the request body is larger than {limit} bytes (NANOVL_MAX_BODY_BYTES)")


def _header(scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return value.decode("latin-1")
    return None


def _unauthorized(scope, api_key: str) -> HTTPError | None:
    if not api_key or scope["path"] in OPEN_PATHS or scope["method"] == "OPTIONS":
        return None
    scheme, _, token = (_header(scope, b"authorization") or "").partition(" ")
    if scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), api_key.encode()):
        return None
    return HTTPError(401, "a valid API key is needed: send `Authorization: Bearer <key>`",
                     type_="invalid_request_error", code="invalid_api_key",
                     headers={"WWW-Authenticate": "Bearer"})


class RequestMiddleware:
    def __init__(self, app, settings: Settings, metrics: Metrics, endpoints: frozenset[str]):
        self.app = app
        self.settings = settings
        self.metrics = metrics
        self.endpoints = endpoints     # route paths, as metric labels (any other path counts as "other")

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        state = scope.setdefault("state", {})
        state["request_id"] = request_id = uuid.uuid4().hex
        status = 500
        limit = self.settings.max_body_bytes

        async def send_with_id(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), (b"x-request-id", request_id.encode())]
            await send(message)

        received = 0

        async def bounded_receive():
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > limit:
                raise BodyTooLarge(limit)
            return message

        try:
            refusal = _unauthorized(scope, self.settings.api_key)
            length = _header(scope, b"content-length")
            if refusal is not None:
                await error_response(refusal)(scope, receive, send_with_id)
            elif length and length.isdigit() and int(length) > limit:
                await http_error_response(BodyTooLarge(limit))(scope, receive, send_with_id)
            else:
                await self.app(scope, bounded_receive, send_with_id)
        finally:
            self._record(scope, state, status, time.perf_counter() - started)

    def _record(self, scope, state: dict, status: int, elapsed: float) -> None:
        path = scope["path"]
        self.metrics.requests.labels(path if path in self.endpoints else "other", str(status)).inc()
        usage = state.get("usage")
        tokens = "" if usage is None else (
            f" prompt {usage['prompt_tokens']} completion {usage['completion_tokens']} tokens, first token "
            f"{usage['ttft_s']:.3f} s, finish {usage['finish_reason']}")
        log.info("%s %s %s %d in %.3f s%s", state["request_id"], scope["method"], path, status, elapsed, tokens)
