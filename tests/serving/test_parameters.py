"""Stage parameters (config.pbtxt strings) -> each stage's frozen settings, through the one reader."""
from __future__ import annotations

import json

import pytest

from nanovl.core.errors import ServerError
from nanovl.core.preprocess import PreprocessSettings
from nanovl.core.vision_runtimes import VisionSettings
from nanovl.engine.factory import EngineSettings
from nanovl.serving.parameters import as_parameters, model_parameters, read_settings
from nanovl.serving.triton_config import DEFAULT_PARAMETERS


def test_engine_settings_carry_the_engine_parameters():
    settings = read_settings(EngineSettings, {"engine": "tensorrt_llm", "engine_dir": "/e",
                                              "kv_cache_free_gpu_memory_fraction": "0.8",
                                              "enable_chunked_context": "False", "enable_kv_cache_reuse": "true"})
    assert (settings.engine_dir, settings.kv_cache_free_gpu_memory_fraction) == ("/e", 0.8)
    assert settings.enable_chunked_context is False and settings.enable_kv_cache_reuse is True
    assert read_settings(EngineSettings, {}).enable_chunked_context is True


def test_vision_settings_come_from_stage_parameters():
    settings = read_settings(VisionSettings, {"vision_engine": "tensorrt", "vision_engine_path": "/e/v.plan",
                                              "device": "cuda", "dtype": "", "torch_threads": "2"})
    assert settings == VisionSettings("tensorrt", "/e/v.plan", "cuda", None, 2)
    assert read_settings(VisionSettings, {"vision_engine": ""}).vision_engine == "pytorch"


def test_preprocess_settings_and_what_they_make():
    settings = read_settings(PreprocessSettings, {"max_tiles": "6", "image_upscale_2x": "yes",
                                                  "image_url_domains": " Example.com, .cdn.net ,",
                                                  "image_fetch_timeout_s": "2.5", "max_image_bytes": "1000"})
    assert settings.tiling.max_tiles == 6 and settings.tiling.upscale_2x is True
    assert settings.limits.max_bytes == 1000
    fetch = settings.fetch(environ={})
    assert fetch.allowed_domains == ("example.com", "cdn.net") and fetch.total_timeout_s == 2.5
    assert fetch.allow_private is False
    assert settings.fetch(environ={"NANOVL_ALLOW_PRIVATE_IMAGE_URLS": "1"}).allow_private is True


@pytest.mark.parametrize("cls", [PreprocessSettings, VisionSettings, EngineSettings])
def test_every_parameter_empty_means_every_default(cls):
    # A blanked value in a deployment's config.pbtxt is the documented default, never a crash.
    blank = {name: "" for name in as_parameters(cls())}
    assert read_settings(cls, blank) == cls()


@pytest.mark.parametrize("cls", [PreprocessSettings, VisionSettings, EngineSettings])
def test_the_committed_defaults_read_back_as_the_defaults(cls):
    stage = {PreprocessSettings: "preprocessing", VisionSettings: "vision_encoder", EngineSettings: "llm"}[cls]
    assert read_settings(cls, DEFAULT_PARAMETERS[stage]) == cls()


@pytest.mark.parametrize("params, words", [({"max_tiles": "twelve"}, "max_tiles: 'twelve' is not a valid int"),
                                           ({"image_upscale_2x": "maybe"}, "image_upscale_2x: 'maybe' is not a boolean")])
def test_a_bad_value_names_its_parameter(params, words):
    with pytest.raises(ServerError, match=words):
        read_settings(PreprocessSettings, params)


def test_model_parameters_read_the_checkpoint_from_the_environment(monkeypatch):
    args = {"model_config": json.dumps({"name": "llm", "parameters": {"checkpoint_dir": {"string_value": ""},
                                                                       "engine": {"string_value": "reference"}}})}
    monkeypatch.setenv("NANOVL_CHECKPOINT", "/ckpt")
    assert model_parameters(args) == {"checkpoint_dir": "/ckpt", "engine": "reference"}
    monkeypatch.delenv("NANOVL_CHECKPOINT")
    with pytest.raises(ServerError, match="NANOVL_CHECKPOINT"):
        model_parameters(args)
