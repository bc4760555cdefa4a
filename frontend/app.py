"""The FastAPI app: routes, OpenAI-style errors, health."""
from __future__ import annotations

import logging
import time
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from nanovl.errors import NanoVLError

from . import chat
from .settings import Settings
from .triton import Ensemble

log = logging.getLogger("nanovl.frontend")


def error_body(message: str, type_: str, param=None, code=None) -> dict:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings.from_env()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        app.state.ensemble = Ensemble(settings.triton_url, settings.ensemble, settings.request_timeout_s)
        if settings.random_weights:
            log.warning("serving a TINY checkpoint with RANDOM weights: answers are gibberish by design")
        yield
        await app.state.ensemble.client.close()

    app = FastAPI(title="Llama-3.1-Nemotron-Nano-VL OpenAI API", version="0.1.0", lifespan=lifespan)
    app.state.settings = settings
    app.include_router(chat.router)

    @app.exception_handler(NanoVLError)
    async def _nanovl_error(_: Request, exc: NanoVLError):
        return JSONResponse(error_body(exc.message, exc.type, exc.param, exc.code), status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        message = f"{where}: {first.get('msg', 'invalid request')}" if where else first.get("msg", "invalid request")
        return JSONResponse(error_body(message, "invalid_request_error", where or None), status_code=400)

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": settings.model_name, "object": "model",
                                             "created": int(time.time()), "owned_by": "nvidia"}]}

    @app.get("/v1/health/live")
    async def live():
        return {"status": "live"}

    @app.get("/v1/health/ready")
    async def ready(request: Request):
        if await request.app.state.ensemble.ready():
            return {"status": "ready"}
        return JSONResponse({"status": "not ready"}, status_code=503)

    return app
