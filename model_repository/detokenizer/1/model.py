"""Triton adapter: one llm response -> its text delta. Stateless (see nanovl.detokenize), one instance."""
import numpy as np
import triton_python_backend_utils as pb_utils

from nanovl.checkpoint import load_config, load_tokenizer
from nanovl.detokenize import TokenBytes, text_delta
from nanovl.settings import model_parameters

_PASS_THROUGH = ("finish_reason", "prompt_tokens", "completion_tokens")


class TritonPythonModel:
    def initialize(self, args):
        params = model_parameters(args)
        self.token_bytes = TokenBytes.from_tokenizer(load_tokenizer(load_config(params["checkpoint_dir"])))

    def execute(self, requests):
        responses = []
        for request in requests:
            ids = pb_utils.get_input_tensor_by_name(request, "output_ids").as_numpy().reshape(-1)
            offset = int(pb_utils.get_input_tensor_by_name(request, "new_token_offset").as_numpy().reshape(-1)[0])
            reason = pb_utils.get_input_tensor_by_name(request, "finish_reason").as_numpy().reshape(-1)[0]
            text = text_delta(self.token_bytes, ids.tolist(), offset, final=bool(reason))
            outputs = [pb_utils.Tensor("text_output", np.array([text.encode()], np.object_)),
                       pb_utils.Tensor("token_ids", np.ascontiguousarray(ids[offset:]))]
            outputs += [pb_utils.Tensor(name, pb_utils.get_input_tensor_by_name(request, name).as_numpy())
                        for name in _PASS_THROUGH]
            responses.append(pb_utils.InferenceResponse(outputs))
        return responses
