"""The FastAPI app: routes, middleware (request id, API key, body limit, CORS), health, metrics, version."""
from __future__ import annotations

import logging
import time
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, Response

from . import chat, completions, errors
from .admission import Admission
from .backend import Backend
from .metrics import CONTENT_TYPE_LATEST, Metrics
from .middleware import OPEN_PATHS, RequestMiddleware
from .settings import Settings
from .triton_backend import TritonBackend

log = logging.getLogger("nanovl.frontend")
API_VERSION = "0.1.0"


def create_app(settings: Settings | None = None, backend: Backend | None = None) -> FastAPI:
    """The app on `backend`, or, without one, on a TritonBackend made from the settings at startup (its gRPC
    channel belongs to the server's event loop). The backend is closed at shutdown."""
    settings = settings or Settings.from_env()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        app.state.backend = backend or TritonBackend(settings.triton_url, settings.ensemble,
                                                     settings.request_timeout_s)
        if settings.random_weights:
            log.warning("serving a TINY checkpoint with RANDOM weights: answers are gibberish by design")
        yield
        await app.state.backend.close()

    app = FastAPI(title="Llama-3.1-Nemotron-Nano-VL OpenAI API", version=API_VERSION, lifespan=lifespan)
    app.state.settings = settings
    app.state.backend = backend   # usable without a lifespan too (httpx's ASGITransport runs none)
    app.state.admission = Admission(settings.max_concurrency, settings.max_queue)
    app.state.metrics = Metrics(app.state.admission)
    app.include_router(chat.router)
    app.include_router(completions.router)
    errors.install(app)
    _add_service_routes(app, settings)
    endpoints = frozenset(app.openapi()["paths"]) | OPEN_PATHS   # metric labels: known paths only
    app.add_middleware(RequestMiddleware, settings=settings, metrics=app.state.metrics, endpoints=endpoints)
    if settings.cors_origins:   # outermost, so that preflight requests need no API key
        app.add_middleware(CORSMiddleware, allow_origins=list(settings.cors_origins), allow_methods=["*"],
                           allow_headers=["*"], expose_headers=["x-request-id"])
    return app


def _add_service_routes(app: FastAPI, settings: Settings) -> None:
    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": settings.model_name, "object": "model",
                                             "created": int(time.time()), "owned_by": "nvidia"}]}

    @app.get("/v1/health/live")
    async def live():
        return {"status": "live"}

    @app.get("/v1/health/ready")
    async def ready(request: Request):
        if not request.app.state.admission.draining and await request.app.state.backend.ready():
            return {"status": "ready"}
        return JSONResponse({"status": "not ready"}, status_code=503)

    # /metrics too: where Prometheus, vLLM users and aiperf look first.
    @app.get("/v1/metrics")
    @app.get("/metrics")
    async def metrics(request: Request):
        return Response(request.app.state.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/version")
    async def version():   # NIM's shape: the product release and the API's semver
        return {"release": API_VERSION, "api": API_VERSION}

    @app.get("/v1/metadata")
    async def metadata():   # the parts of NIM's metadata that mean something outside NVIDIA's container
        return {"version": API_VERSION, "modelInfo": [{"shortName": settings.model_name,
                                                       "modelUrl": f"https://huggingface.co/{settings.model_name}"}],
                "assetInfo": [], "repository_override": "", "selectedModelProfileId": ""}
