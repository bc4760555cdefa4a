"""nanovl.core.vision_export and nanovl.core.vision_runtimes: the ONNX graph of the whole vision stage has a dynamic tile
batch and gives PyTorch's embeddings through onnxruntime; the stage's runtimes are chosen by its parameters."""
import importlib.util

import numpy as np
import onnx
import pytest

from nanovl.core import vision_export
from nanovl.core.errors import ServerError
from nanovl.core.vision_runtimes import (EMBEDDINGS, TILES, OnnxVision, TorchVision, VisionSettings,
                                   load_vision_engine)


def test_the_graph_takes_any_tile_count_as_float_pixels(vision_graph):
    model = onnx.load(str(vision_graph), load_external_data=False)
    (tiles,), (embeddings,) = model.graph.input, model.graph.output
    assert (tiles.name, embeddings.name) == (TILES, EMBEDDINGS)
    # Not uint8: TensorRT takes a uint8 input only straight into a Cast, and the graph also reads its shape.
    assert tiles.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    dims = tiles.type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [512, 512, 3]
    assert embeddings.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert model.opset_import[0].version == vision_export.OPSET <= 20   # TensorRT 10's parser reads up to 20


def test_the_check_leaves_a_reference_for_the_tensorrt_build(config, vision_graph):
    saved = np.load(vision_export.reference_file(vision_graph))
    assert saved["tiles"].dtype == np.uint8 and saved["embeddings"].shape[1:] == (config.tokens_per_tile,
                                                                                  config.llm_hidden_size)
    reference = TorchVision(config, VisionSettings(dtype="float32"))(saved["tiles"])
    assert vision_export.relative_error(saved["embeddings"], reference) < 1e-6


def test_onnxruntime_gives_the_pytorch_embeddings(config, vision_graph):
    assert vision_export.check_onnx(config, vision_graph, (1, 2, 5)) < 1e-5


def test_the_onnxruntime_engine_equals_the_pytorch_engine(config, vision_graph):
    tiles = np.random.default_rng(3).integers(0, 256, (3, 512, 512, 3), dtype=np.uint8)
    ours = load_vision_engine(config, VisionSettings(vision_engine="onnxruntime",
                                                     vision_engine_path=str(vision_graph)))
    reference = load_vision_engine(config, VisionSettings(dtype="float32"))
    assert isinstance(ours, OnnxVision) and isinstance(reference, TorchVision)
    got, want = ours(tiles), reference(tiles)
    assert got.dtype == np.float32 and got.shape == (3, config.tokens_per_tile, config.llm_hidden_size)
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("settings, message", [
    (VisionSettings(vision_engine="onnxruntime"), "needs parameter vision_engine_path"),
    (VisionSettings(vision_engine="tensorrt", vision_engine_path="/no/v.plan"), "needs parameter vision_engine_path"),
    (VisionSettings(vision_engine="tvm"), "not available"),
])
def test_a_wrong_engine_setting_fails_clearly(config, settings, message):
    with pytest.raises(ServerError, match=message):
        load_vision_engine(config, settings)


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="TensorRT is installed")
def test_the_tensorrt_engine_without_tensorrt_fails_clearly(config, tmp_path):
    (tmp_path / "vision.plan").write_bytes(b"plan")
    with pytest.raises(ServerError, match="needs TensorRT, which is not installed"):
        load_vision_engine(config, VisionSettings("tensorrt", str(tmp_path / "vision.plan")))


def test_a_graph_that_differs_from_pytorch_is_refused(config, vision_graph, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(vision_export, "check_onnx", lambda *a: 0.5)
    assert vision_export.main(["--checkpoint", str(config.path), "--onnx", str(vision_graph), "--check"]) == 1
    assert "differs from PyTorch" in capsys.readouterr().err


def test_the_torchscript_exporter_takes_over_when_torch_export_fails(config, tmp_path, monkeypatch):
    import torch

    real_export = torch.onnx.export

    def without_dynamo(*args, dynamo=True, **kwargs):
        if dynamo:
            raise RuntimeError("this torch cannot export with torch.export")
        return real_export(*args, dynamo=False, **kwargs)

    monkeypatch.setattr(torch.onnx, "export", without_dynamo)
    graph = vision_export.export_onnx(config, tmp_path / "v.onnx", max_tiles=8)
    assert onnx.load(str(graph)).graph.input[0].type.tensor_type.shape.dim[0].dim_param
    assert vision_export.check_onnx(config, graph, (1, 3)) < 1e-5
