"""Triton adapter: messages -> input_ids + tiles. The logic is nanovl.preprocess."""
import numpy as np
import triton_python_backend_utils as pb_utils

from nanovl.errors import NanoVLError
from nanovl.preprocess import Preprocessor
from nanovl.settings import model_parameters


class TritonPythonModel:
    def initialize(self, args):
        params = model_parameters(args)
        self.preprocess = Preprocessor.from_checkpoint(
            params["checkpoint_dir"], max_tiles=int(params["max_tiles"]), max_images=int(params["max_images"]))

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                messages = pb_utils.get_input_tensor_by_name(request, "messages").as_numpy().reshape(-1)[0]
                result = self.preprocess(messages)
                responses.append(pb_utils.InferenceResponse([
                    pb_utils.Tensor("input_ids", result.input_ids),
                    pb_utils.Tensor("tiles", np.ascontiguousarray(result.tiles)),
                ]))
            except NanoVLError as exc:
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(exc.to_wire())))
        return responses
