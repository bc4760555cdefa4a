"""The vision encoder's TensorRT path on CPU, against a strict stand-in for TensorRT 10.4 (tests/fake_tensorrt.py)
whose engine is the exported ONNX graph: `make engine`'s vision steps (check, build, check of the engine) and
TensorRTVision (profile, chunking, tensor addresses, I/O types), up to where the GPU takes over. CUDA itself
(device, stream) is replaced by the CPU here; `cuda_device` is tested on its own."""
import numpy as np
import pytest
import torch

from nanovl.core import vision_runtimes as vision_engines, vision_export
from nanovl.core.errors import ServerError
from nanovl.core.vision_runtimes import TensorRTVision, TorchVision, VisionSettings, load_vision_engine
from tests import fake_tensorrt


@pytest.fixture
def trt(monkeypatch):
    module = fake_tensorrt.install(monkeypatch)
    monkeypatch.setattr(vision_engines, "_TRT_LOGGER", None)
    fake_tensorrt.cuda_on_cpu(monkeypatch.setattr)
    return module


def _plan(path, graph, config, *, max_tiles=4, io=("FLOAT", "FLOAT")):
    side = config.image_size
    plan = {"onnx": str(graph), "flags": ["BF16"], "io": {"tiles": io[0], "embeddings": io[1]},
            "profile": {"tiles": [[1, side, side, 3], [2, side, side, 3], [max_tiles, side, side, 3]]}}
    path.write_bytes(fake_tensorrt.plan_bytes(plan))
    return path


def _tiles(n, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, 512, 512, 3), dtype=np.uint8)


def test_make_engines_vision_steps_build_the_engine_and_check_it(config, trt, vision_graph, tmp_path, capsys):
    # The export itself runs in the vision_graph fixture, and as a step of its own in test_build_engine.
    onnx_path, plan_path = vision_graph, tmp_path / "vision.plan"
    assert vision_export.main(["--checkpoint", str(config.path), "--onnx", str(onnx_path), "--max-tiles", "6",
                               "--opt-tiles", "13", "--check", "--tensorrt", str(plan_path)]) == 0
    (built,) = trt.Builder.built
    side = config.image_size
    assert built["flags"] == ["BF16"] and built["onnx"] == str(onnx_path)
    # opt is capped at the profile's max; one profile for the one input
    assert built["profile"] == {"tiles": ((1, side, side, 3), (6, side, side, 3), (6, side, side, 3))}
    assert fake_tensorrt.load_plan(plan_path) == {**built, "profile": {"tiles": [list(s) for s in
                                                                                  built["profile"]["tiles"]]}}
    out = capsys.readouterr().out
    assert "TensorRT (bf16) vs PyTorch: max relative error" in out
    assert len(trt.Logger.instances) == 1   # the build and the check share the process's logger


def test_an_engine_that_differs_from_pytorch_is_refused(config, trt, vision_graph, tmp_path, monkeypatch, capsys):
    # The fixture's check left the reference embeddings beside the graph.
    monkeypatch.setattr(vision_export, "build_tensorrt",
                        lambda config, onnx, plan, **kw: _plan(plan, vision_graph, config))
    monkeypatch.setattr(vision_export, "relative_error", lambda ours, reference: 0.5)
    assert vision_export.main(["--checkpoint", str(config.path), "--onnx", str(vision_graph), "--tensorrt",
                               str(tmp_path / "v.plan")]) == 1
    assert "differs from PyTorch" in capsys.readouterr().err


def test_the_engine_gives_pytorchs_embeddings_in_calls_its_profile_allows(config, trt, vision_graph, tmp_path):
    plan = _plan(tmp_path / "v.plan", vision_graph, config)
    engine = load_vision_engine(config, VisionSettings("tensorrt", str(plan), device="cuda"))
    assert isinstance(engine, TensorRTVision) and engine.max_tiles == 4
    tiles = _tiles(9)
    got = engine(tiles)
    assert engine.engine.runs == [(4, 512, 512, 3), (4, 512, 512, 3), (1, 512, 512, 3)]
    want = TorchVision(config, VisionSettings(dtype="float32"))(tiles)
    assert got.dtype == np.float32 and got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    assert trt.events == ["set_device", "deserialize"]   # the engine loads onto the device made current


def test_a_bf16_output_is_read_as_bf16(config, trt, vision_graph, tmp_path):
    plan = _plan(tmp_path / "v.plan", vision_graph, config, io=("FLOAT", "BF16"))
    engine = TensorRTVision(VisionSettings("tensorrt", str(plan)))
    tiles = _tiles(2, seed=1)
    want = TorchVision(config, VisionSettings(dtype="float32"))(tiles)
    np.testing.assert_allclose(engine(tiles), want, rtol=1e-2, atol=1e-2 * float(np.abs(want).max()))


@pytest.mark.parametrize("io, tolerance", [(("HALF", "FLOAT"), 1e-2), (("BF16", "BF16"), 2e-2)])
def test_inputs_are_fed_in_the_engines_input_type(config, trt, vision_graph, tmp_path, io, tolerance):
    # An engine built from a graph exported in a narrower float type takes its pixels in that type.
    engine = TensorRTVision(VisionSettings("tensorrt", str(_plan(tmp_path / "v.plan", vision_graph, config, io=io))))
    tiles = _tiles(2, seed=2)
    want = TorchVision(config, VisionSettings(dtype="float32"))(tiles)
    np.testing.assert_allclose(engine(tiles), want, rtol=tolerance, atol=tolerance * float(np.abs(want).max()))


@pytest.mark.parametrize("io", [("INT32", "FLOAT"), ("FLOAT", "UINT8")])
def test_an_engine_with_other_than_float_io_is_refused(config, trt, vision_graph, tmp_path, io):
    with pytest.raises(ServerError, match="feeds and reads float tensors"):
        TensorRTVision(VisionSettings("tensorrt", str(_plan(tmp_path / "v.plan", vision_graph, config, io=io))))


def test_a_file_that_is_not_an_engine_is_refused(trt, tmp_path):
    (tmp_path / "v.plan").write_bytes(b"not a plan")
    with pytest.raises(ServerError, match="not a TensorRT engine"):
        TensorRTVision(VisionSettings("tensorrt", str(tmp_path / "v.plan")))


@pytest.mark.parametrize("name, index", [("cuda", 3), ("cuda:1", 1), ("cpu", 3)])
def test_the_cuda_device_always_has_an_index(monkeypatch, name, index):
    # torch.cuda.set_device refuses torch.device("cuda"): the stage's "cuda" must become the current device.
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 3)
    device = vision_engines.cuda_device(torch, name)
    assert device.type == "cuda" and device.index == index
