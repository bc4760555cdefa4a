"""Both engines keep the Engine protocol: the same methods with the same parameters and types, a `stats`, and
isinstance on a built one. Checked statically for both (TrtLlmEngine needs TensorRT-LLM or its stand-in to be
built) and on built engines (the reference on the tiny checkpoint, TrtLlmEngine over tests/fake_trtllm.py)."""
import inspect
import json
import typing

import pytest

from nanovl.engine import factory
from nanovl.engine.protocol import Engine
from nanovl.engine.reference import ReferenceEngine
from nanovl.engine.request import EngineStats
from nanovl.engine.runner import ModelRunner
from nanovl.engine.trtllm import TrtLlmEngine
from nanovl.engine.trtllm_mapping import TrtLlmOptions
from tests import fake_trtllm

METHODS = [name for name, value in vars(Engine).items() if inspect.isfunction(value) and not name.startswith("_")]


def test_the_protocol_is_what_the_stage_uses():
    assert sorted(METHODS) == ["cancel", "shutdown", "start", "submit"]
    assert typing.get_type_hints(Engine) == {"stats": EngineStats}
    assert typing.get_type_hints(factory.build_engine)["return"] is Engine


@pytest.mark.parametrize("engine", [ReferenceEngine, TrtLlmEngine])
@pytest.mark.parametrize("name", METHODS)
def test_each_engine_has_the_protocols_methods_and_signatures(engine, name):
    ours, theirs = inspect.signature(getattr(engine, name)), inspect.signature(getattr(Engine, name))
    assert [(p.name, p.kind, p.default) for p in ours.parameters.values()] == \
        [(p.name, p.kind, p.default) for p in theirs.parameters.values()]
    ours_hints = typing.get_type_hints(getattr(engine, name))
    theirs_hints = typing.get_type_hints(getattr(Engine, name))
    if name == "start":   # returns itself: its own class, which is an Engine
        assert ours_hints.pop("return") is engine and theirs_hints.pop("return") is Engine
    assert ours_hints == theirs_hints


@pytest.mark.parametrize("engine", [ReferenceEngine, TrtLlmEngine])
def test_each_engine_declares_its_stats(engine):
    assert typing.get_type_hints(engine)["stats"] is EngineStats


def test_built_engines_are_engines(config, tmp_path, monkeypatch):
    fake_trtllm.install(monkeypatch)
    (tmp_path / "config.json").write_text(json.dumps({"pretrained_config": {"mapping": {"world_size": 1}}}))
    built = [ReferenceEngine(ModelRunner(config, kv_cache_tokens=256), print),
             TrtLlmEngine(TrtLlmOptions(tmp_path), config, print)]
    for engine in built:
        assert engine.start() is engine
        try:
            assert isinstance(engine, Engine) and isinstance(engine.stats, EngineStats)
        finally:
            engine.shutdown()
