"""The real stack: tritonserver (from the nvidia-pytriton wheel) and the frontend, on free ports."""
from __future__ import annotations

import base64
import io
import os
import subprocess
from pathlib import Path

import pytest
from PIL import Image

from nanovl.serving.launch import ROOT, Stack, free_port, wait_for_http

MODEL = "nvidia/llama-3.1-nemotron-nano-vl-8b-v1"


def stack_on_free_ports(checkpoint, **options) -> Stack:
    """A Stack (not started) whose four ports are free ones."""
    port, grpc_port, metrics_port, http_port = (free_port() for _ in range(4))
    return Stack(checkpoint, port=port, grpc_port=grpc_port, metrics_port=metrics_port, http_port=http_port,
                 **options)


@pytest.fixture(scope="session")
def stack(tiny_checkpoint, tmp_path_factory):
    # The image-URL tests serve images from 127.0.0.1, which preprocessing refuses unless told otherwise.
    os.environ["NANOVL_ALLOW_PRIVATE_IMAGE_URLS"] = "1"
    server = stack_on_free_ports(tiny_checkpoint)
    server.start(deadline_s=180)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def container_frontend(stack):
    """A second frontend on the session's tritonserver, under the GPU image's python3 as `make test` rebuilds it
    (Python 3.10, TensorRT-LLM 0.14's transformers, Pillow and openai pins) -> its port."""
    python = Path(os.environ.get("NANOVL_CONTAINER_PYTHON", ROOT / ".venv-container" / "bin" / "python"))
    if not python.is_file():
        pytest.fail(f"{python} does not exist: `make test` creates it (tests/container-requirements.txt)")
    port = free_port()
    env = {"PATH": os.environ.get("PATH", ""), "NANOVL_TRITON_URL": f"127.0.0.1:{stack.grpc_port}",
           "NANOVL_CHECKPOINT": str(stack.checkpoint)}
    process = subprocess.Popen([str(python), "-m", "frontend", "--host", "127.0.0.1", "--port", str(port)],
                               cwd=ROOT, env=env)
    try:
        wait_for_http(f"http://127.0.0.1:{port}/v1/health/ready", deadline_s=60, process=process)
        yield port
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.fixture(scope="session")
def openai_client(stack):
    from openai import OpenAI

    return OpenAI(base_url=f"http://127.0.0.1:{stack.port}/v1", api_key="unused", max_retries=0)


def data_url(width: int, height: int, color=(200, 30, 30), fmt="PNG") -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buffer, fmt)
    return f"data:image/{fmt.lower()};base64," + base64.b64encode(buffer.getvalue()).decode()


@pytest.fixture(scope="session")
def make_frontend(stack):
    """In-process frontends with settings of their own (limits, timeouts), on the session's tritonserver."""
    from fastapi.testclient import TestClient

    from frontend.app import create_app
    from frontend.settings import Settings

    clients = []

    def make(**settings) -> TestClient:
        client = TestClient(create_app(Settings(triton_url=f"127.0.0.1:{stack.grpc_port}", **settings)))
        clients.append(client.__enter__())
        return client
    yield make
    for client in clients:
        client.__exit__(None, None, None)
