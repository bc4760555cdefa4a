"""Admission through HTTP on a scripted backend (tests/frontend/fake_backend.py): max_concurrency generations
run, max_queue wait, the rest are a 429 at once; a draining server refuses with a 503; readiness follows the
backend."""
from __future__ import annotations

import asyncio

import httpx
from fastapi.testclient import TestClient

from frontend.app import create_app
from frontend.settings import Settings
from tests.frontend.fake_backend import ScriptedBackend

MODEL = Settings().model_name
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


async def until(predicate) -> None:
    """Lets the other tasks run until `predicate` holds (a bounded number of turns, no clock)."""
    for _ in range(10_000):
        if predicate():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition never met")


def test_past_the_queue_a_request_is_429_at_once_and_the_queued_one_is_served():
    async def run() -> None:
        gate = asyncio.Event()
        backend = ScriptedBackend(gate=gate)   # holds every generation before its first delta
        app = create_app(Settings(max_concurrency=1, max_queue=1), backend)
        admission = app.state.admission
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
            first = asyncio.ensure_future(client.post("/v1/chat/completions", json=CHAT))
            await until(lambda: admission.running == 1)
            queued = asyncio.ensure_future(client.post("/v1/chat/completions", json={**CHAT, "stream": True}))
            await until(lambda: admission.waiting == 1)
            refused = await client.post("/v1/completions", json={"model": MODEL, "prompt": "x"})
            assert refused.status_code == 429 and refused.headers["retry-after"] == "1"
            assert refused.json()["error"]["code"] == "server_busy"
            assert len(backend.calls) == 1   # the queued request has not reached the backend yet
            gate.set()
            assert (await first).status_code == 200 and (await queued).status_code == 200
        assert len(backend.calls) == 2 and all(call.finished for call in backend.calls)
        assert (admission.running, admission.waiting) == (0, 0)
    asyncio.run(run())


def test_with_no_queue_the_second_request_is_refused_while_the_first_runs():
    async def run() -> None:
        gate = asyncio.Event()
        app = create_app(Settings(max_concurrency=1, max_queue=0), ScriptedBackend(gate=gate))
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
            first = asyncio.ensure_future(client.post("/v1/chat/completions", json=CHAT))
            await until(lambda: app.state.admission.running == 1)
            assert (await client.post("/v1/chat/completions", json=CHAT)).status_code == 429
            gate.set()
            assert (await first).status_code == 200
            assert (await client.post("/v1/chat/completions", json=CHAT)).status_code == 200   # the slot is free
    asyncio.run(run())


def test_a_draining_server_refuses_new_generations_and_is_not_ready():
    backend = ScriptedBackend()
    with TestClient(create_app(Settings(), backend)) as client:
        assert client.get("/v1/health/ready").status_code == 200
        client.app.state.admission.draining = True
        response = client.post("/v1/chat/completions", json=CHAT)
        assert response.status_code == 503 and response.json()["error"]["code"] == "shutting_down"
        assert client.get("/v1/health/ready").status_code == 503
    assert backend.calls == []


def test_readiness_follows_the_backend():
    backend = ScriptedBackend(is_ready=False)
    with TestClient(create_app(Settings(), backend)) as client:
        assert client.get("/v1/health/ready").status_code == 503
        backend.is_ready = True
        assert client.get("/v1/health/ready").json() == {"status": "ready"}
    assert backend.closed   # the app's shutdown closed the backend
