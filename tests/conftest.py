"""Shared fixtures: the tiny checkpoint (generated once per session) and what loads from it."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


LAYERS = ("core", "engine", "serving", "frontend", "tooling", "integration")


def pytest_collection_modifyitems(items):
    """Each test is marked with its layer, the folder it lives in: `pytest -m engine` runs the engine's."""
    for item in items:
        layer = Path(item.fspath).parent.name
        if layer in LAYERS:
            item.add_marker(getattr(pytest.mark, layer))


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    # make test-container runs under a Python that cannot generate it (no torch): it passes `make checkpoint`'s.
    if os.environ.get("NANOVL_TEST_CHECKPOINT"):
        return Path(os.environ["NANOVL_TEST_CHECKPOINT"])
    from build import tiny_checkpoint as generator

    return generator.write(tmp_path_factory.mktemp("tiny"), seed=0)


@pytest.fixture(scope="session")
def config(tiny_checkpoint):
    from nanovl.core.checkpoint import load_config

    return load_config(tiny_checkpoint)


@pytest.fixture(scope="session")
def tokenizer(config):
    from nanovl.core.checkpoint import load_tokenizer

    return load_tokenizer(config)


@pytest.fixture(scope="session")
def token_bytes(tokenizer):
    """Built once: a table of Llama 3.1's 128,265 entries takes a fifth of a second, too slow per example."""
    from nanovl.core.detokenize import TokenBytes

    return TokenBytes.from_tokenizer(tokenizer)


@pytest.fixture(scope="session")
def vision_graph(config, tmp_path_factory) -> Path:
    """The tiny checkpoint's vision encoder as `make engine` exports it (ONNX, 1..16 tiles) and checked against
    PyTorch, which leaves the reference embeddings beside it: exported once for every vision runtime's tests."""
    from nanovl.core import vision_export

    path = tmp_path_factory.mktemp("vision") / "vision.onnx"
    assert vision_export.main(["--checkpoint", str(config.path), "--onnx", str(path), "--max-tiles", "16",
                               "--export", "--check"]) == 0
    return path


@pytest.fixture(scope="session")
def hf_llm(config):
    """The language model loaded by transformers itself, as an independent reference."""
    from transformers import LlamaConfig, LlamaForCausalLM
    from safetensors.torch import load_file

    cfg = {k: v for k, v in config.llm_config.items() if k not in ("architectures", "model_type")}
    model = LlamaForCausalLM(LlamaConfig(**cfg))
    weights = load_file(str(config.path / "model.safetensors"))
    model.load_state_dict({k[len("language_model."):]: v for k, v in weights.items()
                           if k.startswith("language_model.")})
    return model.eval()


def chat_ids(tokenizer, text: str) -> list[int]:
    rendered = tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                             add_generation_prompt=True)
    return tokenizer(rendered, add_special_tokens=False).input_ids


def hf_greedy(model, ids: list[int], max_new_tokens: int, eos: tuple[int, ...]) -> list[int]:
    """transformers' own greedy generate; the eos token it stops on is dropped, as our stream drops it."""
    import torch

    out = model.generate(torch.tensor([ids]), max_new_tokens=max_new_tokens, do_sample=False,
                         eos_token_id=list(eos), pad_token_id=eos[0])[0, len(ids):].tolist()
    for i, token in enumerate(out):
        if token in eos:
            return out[:i]
    return out
