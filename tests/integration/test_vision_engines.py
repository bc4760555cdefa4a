"""The vision_encoder stage on the onnxruntime engine, in a real tritonserver: the exported graph serves the
stage's own gRPC contract (ragged tiles in, one prompt table per request out) with PyTorch's embeddings."""
import shutil

import numpy as np
import pytest

from nanovl.serving.triton_config import write_repository
from nanovl.core.vision_runtimes import TorchVision, VisionSettings
from tests.integration.conftest import stack_on_free_ports


@pytest.fixture(scope="module")
def onnx_stage(tiny_checkpoint, vision_graph, tmp_path_factory):
    repository = tmp_path_factory.mktemp("onnx-stage") / "repository"
    write_repository(repository, {"vision_engine": "onnxruntime", "vision_engine_path": str(vision_graph),
                                  "checkpoint_dir": str(tiny_checkpoint)})
    for stage in ("preprocessing", "llm", "detokenizer", "ensemble"):   # this server runs the one stage
        shutil.rmtree(repository / stage)
    server = stack_on_free_ports(tiny_checkpoint, repository=repository)
    server.start_triton(deadline_s=120)
    yield server
    server.stop()


def test_the_onnxruntime_stage_serves_pytorch_embeddings(onnx_stage, config):
    import tritonclient.grpc as grpcclient

    rng = np.random.default_rng(11)
    tiles = rng.integers(0, 256, (1, 3, 512, 512, 3), dtype=np.uint8)
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{onnx_stage.grpc_port}")
    try:
        assert client.get_model_config("vision_encoder").config.parameters["vision_engine"].string_value \
            == "onnxruntime"
        request = grpcclient.InferInput("tiles", list(tiles.shape), "UINT8")
        request.set_data_from_numpy(tiles)
        table = client.infer("vision_encoder", [request]).as_numpy("prompt_embedding_table")
    finally:
        client.close()
    reference = TorchVision(config, VisionSettings(dtype="float32"))(tiles[0])
    assert table.shape == (1, 3 * config.tokens_per_tile, config.llm_hidden_size)
    np.testing.assert_allclose(table[0], reference.reshape(-1, config.llm_hidden_size), atol=1e-4, rtol=1e-4)
