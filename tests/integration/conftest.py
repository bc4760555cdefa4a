"""The real stack: tritonserver (from the nvidia-pytriton wheel) and the frontend, on free ports."""
from __future__ import annotations

import base64
import io
import os

import pytest
from PIL import Image

from nanovl.launch import Stack, free_port

MODEL = "nvidia/llama-3.1-nemotron-nano-vl-8b-v1"


@pytest.fixture(scope="session")
def stack(tiny_checkpoint, tmp_path_factory):
    # The image-URL tests serve images from 127.0.0.1, which preprocessing refuses unless told otherwise.
    os.environ["NANOVL_ALLOW_PRIVATE_IMAGE_URLS"] = "1"
    ports = [free_port() for _ in range(4)]
    server = Stack(tiny_checkpoint, port=ports[0], grpc_port=ports[1], metrics_port=ports[2], http_port=ports[3])
    server.start(deadline_s=180)
    yield server
    server.stop()


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
