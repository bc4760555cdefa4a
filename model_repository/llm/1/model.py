"""Triton adapter for the decoupled llm stage: execute() enqueues and returns; the engine loop generates and
a sender thread streams. The logic is nanovl.engine (GenerationService)."""
import numpy as np
import triton_python_backend_utils as pb_utils

from nanovl.checkpoint import load_config, load_tokenizer
from nanovl.detokenize import TokenBytes
from nanovl.engine.factory import build_engine
from nanovl.engine.service import GenerationService, sampling_params
from nanovl.errors import NanoVLError
from nanovl.settings import model_parameters

_SAMPLING = ("max_tokens", "temperature", "top_p", "top_k", "seed")
_FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL


def _scalar(request, name):
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return None if tensor is None else tensor.as_numpy().reshape(-1)[0].item()


class TritonPythonModel:
    def initialize(self, args):
        params = model_parameters(args)
        self.config = load_config(params["checkpoint_dir"])
        token_bytes = TokenBytes.from_tokenizer(load_tokenizer(self.config))

        def engine_factory(on_output):
            return build_engine(params["engine"], self.config, on_output, device=params["device"],
                                dtype=params["dtype"] or None, max_running=int(params["max_running"]))

        self.service = GenerationService(engine_factory, token_bytes, self._send)

    def execute(self, requests):
        for request in requests:
            sender = request.get_response_sender()
            try:
                prompt_ids = pb_utils.get_input_tensor_by_name(request, "input_ids").as_numpy().reshape(-1)
                table = pb_utils.get_input_tensor_by_name(request, "prompt_embedding_table").as_numpy()
                sampling = sampling_params(self.config, len(prompt_ids),
                                           **{name: _scalar(request, name) for name in _SAMPLING})
                self.service.submit(sender, prompt_ids, sampling, table if len(table) else None)
            except NanoVLError as exc:
                sender.send(pb_utils.InferenceResponse(error=pb_utils.TritonError(exc.to_wire())), flags=_FINAL)
        return None

    @staticmethod
    def _send(sender, message):
        if message.error is not None:
            sender.send(pb_utils.InferenceResponse(error=pb_utils.TritonError(message.error)), flags=_FINAL)
            return
        response = pb_utils.InferenceResponse([
            pb_utils.Tensor("output_ids", message.output_ids),
            pb_utils.Tensor("new_token_offset", np.array([message.new_offset], np.int32)),
            pb_utils.Tensor("finish_reason", np.array([message.finish_reason.encode()], np.object_)),
            pb_utils.Tensor("prompt_tokens", np.array([message.prompt_tokens], np.int32)),
            pb_utils.Tensor("completion_tokens", np.array([message.completion_tokens], np.int32)),
        ])
        sender.send(response, flags=_FINAL if message.final else 0)

    def finalize(self):
        self.service.close()
