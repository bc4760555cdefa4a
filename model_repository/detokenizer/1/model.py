"""Triton adapter: one llm response -> its text delta. Stateless (see nanovl.core.detokenize), one instance.

Also the 2.51 cancellation path (nanovl.serving.control): this downstream stage sees request.is_cancelled()
of a direct ensemble client and sends llm a stop request for that request id.
"""
import numpy as np
import triton_python_backend_utils as pb_utils

from nanovl.core.checkpoint import load_config, load_tokenizer
from nanovl.core.detokenize import TokenBytes, text_delta
from nanovl.serving import control, tensors as T
from nanovl.serving.parameters import model_parameters

_PASS_THROUGH = tuple(t.name for t in (T.FINISH_REASON, T.PROMPT_TOKENS, T.COMPLETION_TOKENS, T.TOKEN_LOGPROBS,
                                       T.TOP_LOGPROBS, T.SEQUENCE_INDEX, T.CACHED_TOKENS))
# is_cancelled() is an IPC per call: poll every Nth response of a request id (a bounded, lossy counter).
_CANCEL_POLL_EVERY = 4
_COUNTER_LIMIT = 4096


def _input(request, name):
    return pb_utils.get_input_tensor_by_name(request, name).as_numpy()


class TritonPythonModel:
    def initialize(self, args):
        params = model_parameters(args)
        self.token_bytes = TokenBytes.from_tokenizer(load_tokenizer(load_config(params["checkpoint_dir"])))
        self.seen: dict[str, int] = {}

    def execute(self, requests):
        return [self._one(request) for request in requests]

    def _one(self, request):
        ids = _input(request, T.OUTPUT_IDS.name).reshape(-1)
        offset = int(_input(request, T.NEW_OFFSET.name).reshape(-1)[0])
        reason = _input(request, T.FINISH_REASON.name).reshape(-1)[0]
        trim = int(_input(request, T.TRIM_BYTES.name).reshape(-1)[0])
        if not reason:
            self._maybe_stop(request)
        text = text_delta(self.token_bytes, ids.tolist(), offset, final=bool(reason), trim_bytes=trim)
        table = self.token_bytes.table
        logprobs = _input(request, T.TOKEN_LOGPROBS.name)
        new_ids = ids[offset:]
        pieces = [table[i] if 0 <= i < len(table) else b"" for i in new_ids] if len(logprobs) else []
        top_ids = _input(request, T.TOP_LOGPROB_IDS.name)
        top_pieces = [[table[i] if 0 <= i < len(table) else b"" for i in row] for row in top_ids]
        outputs = [pb_utils.Tensor(T.TEXT_OUTPUT.name, np.array([text.encode()], np.object_)),
                   pb_utils.Tensor(T.TOKEN_IDS.name, np.ascontiguousarray(new_ids)),
                   pb_utils.Tensor(T.TOKENS.name, np.array(pieces, np.object_).reshape(-1)),
                   pb_utils.Tensor(T.TOP_LOGPROB_TOKENS.name,
                                   np.array(top_pieces, np.object_).reshape(top_ids.shape))]
        outputs += [pb_utils.Tensor(name, _input(request, name)) for name in _PASS_THROUGH]
        return pb_utils.InferenceResponse(outputs)

    def _maybe_stop(self, request):
        request_id = request.request_id()
        if not request_id:
            return
        count = self.seen.get(request_id, 0) + 1
        if len(self.seen) >= _COUNTER_LIMIT:
            self.seen.clear()
        self.seen[request_id] = count
        if count % _CANCEL_POLL_EVERY == 0 and request.is_cancelled():
            stop = [pb_utils.Tensor(k, v) for k, v in control.stop_inputs(request_id).items()]
            for _ in pb_utils.InferenceRequest(model_name=control.LLM, inputs=stop,
                                               requested_output_names=[]).exec(decoupled=True):
                pass
