"""The whole stack with the llm stage on engine=tensorrt_llm, in a real tritonserver: tests/fake_trtllm.py stands
in for TensorRT-LLM's Executor inside the stage's stub (as a `tensorrt_llm` package in the stage's folder),
so the stage, the ensemble, the detokenizer and the frontend run around TrtLlmEngine as they will on a GPU. The
stand-in streams back the prompt's ordinary tokens one a step and stops at a stop id, so every answer is known
from the prompt; prompt ids >= vocab_size must come with a bf16 table holding their rows."""
import json

import httpx
import pytest

from nanovl.serving.launch import ROOT
from nanovl.core.preprocess import Preprocessor
from nanovl.serving.triton_config import write_repository
from tests.integration.conftest import MODEL, data_url, stack_on_free_ports
from tests.integration.test_generation import engine_gauge, wait_until_idle

# Appended to a copy of tests/fake_trtllm.py: the stand-in, told the checkpoint's vocabulary and the engine's dtype.
CONFIGURE = """
import torch as _torch

Executor.vocab_size = {vocab_size}
Executor.table_dtype = _torch.bfloat16
Executor.step_seconds = 0.01
"""


@pytest.fixture(scope="module")
def trt_stack(tiny_checkpoint, config, tmp_path_factory):
    work = tmp_path_factory.mktemp("trtllm-stage")
    engine_dir = work / "engine"   # what trtllm-build writes beside the engine, as much as the stage reads
    engine_dir.mkdir()
    (engine_dir / "config.json").write_text(json.dumps({
        "pretrained_config": {"dtype": "bfloat16", "mapping": {"world_size": 1, "tp_size": 1}},
        "build_config": {"max_batch_size": 8, "max_num_tokens": 8192, "max_input_len": 16383,
                         "max_seq_len": 16384, "plugin_config": {"use_paged_context_fmha": True}}}))
    repository = work / "repository"
    write_repository(repository, {"engine": "tensorrt_llm", "engine_dir": str(engine_dir),
                                  "kv_cache_free_gpu_memory_fraction": "0.8", "checkpoint_dir": str(tiny_checkpoint)})
    # The Python backend puts a model's version folder on its stub's path: the stand-in goes there as the
    # `tensorrt_llm` package (the stub does not read PYTHONPATH).
    package = repository / "llm" / "1" / "tensorrt_llm"
    (package / "bindings").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "bindings" / "__init__.py").write_text("")
    (package / "bindings" / "executor.py").write_text(
        (ROOT / "tests" / "fake_trtllm.py").read_text() + CONFIGURE.format(vocab_size=config.vocab_size))
    server = stack_on_free_ports(tiny_checkpoint, repository=repository)
    server.start(deadline_s=180)
    yield server
    server.stop()


def _expected(config, messages, max_tokens):
    """What the stand-in answers: the prompt's ordinary ids up to the first stop id, at most max_tokens -> (prompt
    ids, text, completion tokens, finish reason). A stop id is neither shown nor counted, as NIM counts."""
    preprocessor = Preprocessor.from_checkpoint(str(config.path))
    ids = [int(t) for t in preprocessor(json.dumps(messages)).input_ids]
    ordinary = [t for t in ids if t < config.vocab_size]
    first_stop = next(i for i, t in enumerate(ordinary) if t in config.eos_token_ids)
    answer = ordinary[:min(first_stop, max_tokens)]
    text = preprocessor.tokenizer.decode(answer, skip_special_tokens=True)
    return ids, text, len(answer), "stop" if first_stop < max_tokens else "length"


def test_an_image_chat_goes_through_the_executor_with_its_table(trt_stack, config):
    messages = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_url(320, 200)}},
                                             {"type": "text", "text": "What is in the picture?"}]}]
    ids, text, completion, finish = _expected(config, messages, 200)
    response = httpx.post(f"http://127.0.0.1:{trt_stack.port}/v1/chat/completions", timeout=60,
                          json={"model": MODEL, "messages": messages, "max_tokens": 200})
    assert response.status_code == 200, response.text
    body = response.json()
    assert any(t >= config.vocab_size for t in ids)   # the image rows went in as table ids
    assert finish == "stop" and text.strip()
    assert body["choices"][0]["message"]["content"] == text and body["choices"][0]["finish_reason"] == finish
    usage = body["usage"]
    assert 0 <= usage.pop("prompt_tokens_details")["cached_tokens"] <= len(ids)
    assert usage == {"prompt_tokens": len(ids), "completion_tokens": completion, "total_tokens": len(ids) + completion}


def test_a_stream_stops_at_max_tokens_with_usage(trt_stack, config):
    messages = [{"role": "user", "content": "Say something long, please."}]
    ids, text, completion, finish = _expected(config, messages, 3)
    body = {"model": MODEL, "messages": messages, "max_tokens": 3, "stream": True,
            "stream_options": {"include_usage": True}}
    with httpx.stream("POST", f"http://127.0.0.1:{trt_stack.port}/v1/chat/completions", json=body, timeout=60) as r:
        assert r.status_code == 200
        events = [json.loads(line[6:]) for line in r.iter_lines()
                  if line.startswith("data: ") and line != "data: [DONE]"]
    content = "".join(e["choices"][0]["delta"].get("content", "") for e in events if e["choices"])
    reasons = [e["choices"][0]["finish_reason"] for e in events if e["choices"] and e["choices"][0]["finish_reason"]]
    assert (content, reasons, finish, completion) == (text, ["length"], "length", 3)
    assert events[-1]["usage"]["completion_tokens"] == 3 and events[-1]["usage"]["prompt_tokens"] == len(ids)


def test_the_gauges_follow_the_executors_iteration_stats(trt_stack):
    # A raw prompt with no stop id: the stand-in cycles through it until max_tokens, 0.01 s a token.
    body = {"model": MODEL, "prompt": "one two three four", "max_tokens": 400, "stream": True}
    seen = []
    with httpx.stream("POST", f"http://127.0.0.1:{trt_stack.port}/v1/completions", json=body, timeout=60) as r:
        for _ in r.iter_lines():
            if not seen or seen[-1][0] == 0:   # the stage updates them every 0.5 s
                seen.append((engine_gauge(trt_stack, "nanovl_engine_running_sequences"),
                             engine_gauge(trt_stack, "nanovl_engine_kv_cache_usage")))
    # The stand-in's iteration stats: one active request, 10 of 100 KV blocks used per request.
    assert (1, 0.1) in seen
    assert wait_until_idle(trt_stack) < 5   # and they fall to zero when the Executor is idle
