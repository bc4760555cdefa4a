"""Our responses validate against OpenAI's published schemas (../shared/openai/openapi.yaml), from the frontend
under this environment and under the GPU image's python3 (Python 3.10, TensorRT-LLM 0.14's openai and pydantic)."""
import json
import os
from pathlib import Path

import httpx
import pytest
import yaml
from jsonschema import Draft202012Validator
from referencing import Registry, Resource

from tests.integration.conftest import MODEL, data_url

SPEC = Path(os.environ.get("NANOVL_OPENAPI_SPEC",
                           Path(__file__).resolve().parents[3] / "shared" / "openai" / "openapi.yaml"))


def _honour_nullable(node):
    """The spec keeps OpenAPI 3.0's `nullable: true` in places; JSON Schema spells it as a 'null' type."""
    if isinstance(node, dict):
        if node.get("nullable") is True and isinstance(node.get("type"), str):
            node["type"] = [node["type"], "null"]
            if "enum" in node:
                node["enum"] = [*node["enum"], None]
        for value in node.values():
            _honour_nullable(value)
    elif isinstance(node, list):
        for value in node:
            _honour_nullable(value)
    return node


@pytest.fixture(scope="module")
def validator_for():
    spec = _honour_nullable(yaml.load(SPEC.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)))
    registry = Registry().with_resource("urn:openai", Resource.from_contents(spec, default_specification=
                                        __import__("referencing.jsonschema").jsonschema.DRAFT202012))

    def validator(name):
        return Draft202012Validator({"$ref": f"urn:openai#/components/schemas/{name}"}, registry=registry)
    return validator


@pytest.fixture(scope="module", params=["this-python", "container-python"])
def port(request, stack):
    return stack.port if request.param == "this-python" else request.getfixturevalue("container_frontend")


def test_chat_completion_matches_the_spec(port, validator_for):
    body = {"model": MODEL, "max_tokens": 4, "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": data_url(64, 64)}}, {"type": "text", "text": "hi"}]}]}
    response = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=body, timeout=60)
    assert response.status_code == 200
    validator_for("CreateChatCompletionResponse").validate(response.json())


def test_stream_chunks_match_the_spec(port, validator_for):
    body = {"model": MODEL, "max_tokens": 6, "stream": True, "stream_options": {"include_usage": True},
            "messages": [{"role": "user", "content": "hi"}]}
    with httpx.stream("POST", f"http://127.0.0.1:{port}/v1/chat/completions", json=body, timeout=60) as r:
        events = [line[6:] for line in r.iter_lines() if line.startswith("data: ") and line != "data: [DONE]"]
    validator = validator_for("CreateChatCompletionStreamResponse")
    for event in events:
        validator.validate(json.loads(event))


def test_models_and_errors_match_the_spec(port, validator_for):
    base = f"http://127.0.0.1:{port}/v1"
    validator_for("ListModelsResponse").validate(httpx.get(f"{base}/models").json())
    error = httpx.post(f"{base}/chat/completions", json={"model": "nope", "messages": [{"role": "user", "content": "x"}]})
    assert error.status_code == 404
    validator_for("ErrorResponse").validate(error.json())


def test_text_completion_matches_the_spec(port, validator_for):
    body = {"model": MODEL, "prompt": "Once upon a time", "max_tokens": 5, "logprobs": 2}
    response = httpx.post(f"http://127.0.0.1:{port}/v1/completions", json=body, timeout=60)
    assert response.status_code == 200
    validator_for("CreateCompletionResponse").validate(response.json())
