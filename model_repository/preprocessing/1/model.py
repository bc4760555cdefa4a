"""Triton adapter: messages (or a raw prompt) -> input_ids + tiles. The logic is nanovl.core.preprocess.

The Preprocessor fetches a request's remote images concurrently on its own event-loop thread, which lives
as long as the model (one HTTP client and connection pool for every request, not one per execute()).
"""
import os

import triton_python_backend_utils as pb_utils

from nanovl.core.errors import NanoVLError
from nanovl.core.preprocess import PreprocessSettings, Preprocessor
from nanovl.serving import tensors as T
from nanovl.serving.image_io import preprocessed_outputs, record_dir
from nanovl.serving.parameters import model_parameters, read_settings


def _scalar(request, name: str):
    """The one element of an optional BYTES [1] input, or None when the request left it out."""
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return None if tensor is None else tensor.as_numpy().reshape(-1)[0]


class TritonPythonModel:
    def initialize(self, args):
        params = model_parameters(args)
        # The stage's instances are processes of one tritonserver, their parent: they share one record of the
        # images they have sent, so a conversation's next turn skips decoding whichever instance takes it.
        self.preprocess = Preprocessor.from_checkpoint(params["checkpoint_dir"],
                                                       read_settings(PreprocessSettings, params),
                                                       record_dir(os.getppid()))

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                result = self.preprocess.from_inputs(_scalar(request, T.MESSAGES.name),
                                                  _scalar(request, T.PROMPT.name))
                outputs = preprocessed_outputs(result, self.preprocess.tiling)
                responses.append(pb_utils.InferenceResponse([pb_utils.Tensor(k, v) for k, v in outputs.items()]))
            except NanoVLError as exc:
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(exc.to_wire())))
        return responses

    def finalize(self):
        self.preprocess.close()
