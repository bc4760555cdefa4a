"""A small asyncio client for Triton's streaming gRPC API, used by the frontend and the examples.

Written over the generated KServe-v2 gRPC stubs rather than `tritonclient.grpc.aio.stream_infer`: that
helper rejects the `triton_enable_empty_final_response` request parameter, without which a decoupled
model's end of stream cannot be seen (tritonserver-cpu.md).
"""
from __future__ import annotations

from typing import AsyncIterator

import grpc
import numpy as np
from tritonclient.grpc import InferResult, service_pb2, service_pb2_grpc
from tritonclient.utils import np_to_triton_dtype, serialize_byte_tensor


class TritonStreamError(Exception):
    """An error response on the stream; the message is the model's (see nanovl.core.errors.from_wire)."""


def infer_request(model: str, inputs: dict[str, np.ndarray], *, request_id: str = "",
                  outputs: tuple[str, ...] = ()) -> service_pb2.ModelInferRequest:
    """outputs: the output names wanted (Triton sends only those); empty for all of them."""
    request = service_pb2.ModelInferRequest(model_name=model, id=request_id)
    for name in outputs:
        request.outputs.add().name = name
    for name, array in inputs.items():
        tensor = request.inputs.add()
        tensor.name = name
        tensor.datatype = np_to_triton_dtype(array.dtype)
        tensor.shape.extend(array.shape)
        raw = serialize_byte_tensor(array).item() if tensor.datatype == "BYTES" else array.tobytes()
        request.raw_input_contents.append(raw)
    request.parameters["triton_enable_empty_final_response"].bool_param = True
    return request


def bytes_tensor(*values: str | bytes) -> np.ndarray:
    return np.array([v.encode() if isinstance(v, str) else v for v in values], dtype=np.object_)


class TritonClient:
    def __init__(self, url: str):
        self.url = url
        self._channel = grpc.aio.insecure_channel(url, options=[
            ("grpc.max_send_message_length", 256 * 1024 * 1024),
            ("grpc.max_receive_message_length", 256 * 1024 * 1024),
        ])
        self._stub = service_pb2_grpc.GRPCInferenceServiceStub(self._channel)

    async def close(self) -> None:
        await self._channel.close()

    async def server_ready(self, timeout: float = 2.0) -> bool:
        try:
            reply = await self._stub.ServerReady(service_pb2.ServerReadyRequest(), timeout=timeout)
            return reply.ready
        except grpc.RpcError:
            return False

    async def model_ready(self, name: str, timeout: float = 2.0) -> bool:
        try:
            reply = await self._stub.ModelReady(service_pb2.ModelReadyRequest(name=name), timeout=timeout)
            return reply.ready
        except grpc.RpcError:
            return False

    async def stream(self, model: str, inputs: dict[str, np.ndarray], *, request_id: str = "",
                     timeout: float | None = None,
                     outputs: tuple[str, ...] = ()) -> AsyncIterator[dict[str, np.ndarray]]:
        """Yields each response's outputs (an empty dict for a bare final flag) until the final one; only
        `outputs` if named (each output costs serialization on both sides, per response).
        Leaving the loop early cancels the call, which ends the stream on the server."""
        request = infer_request(model, inputs, request_id=request_id, outputs=outputs)
        call = self._stub.ModelStreamInfer(iter([request]), timeout=timeout)
        finished = False
        try:
            async for reply in call:
                if reply.error_message:
                    finished = True   # an error response ends the request on the server too
                    raise TritonStreamError(reply.error_message)
                response = reply.infer_response
                result = InferResult(response)
                finished = response.parameters["triton_final_response"].bool_param
                yield {out.name: result.as_numpy(out.name) for out in response.outputs}
                if finished:
                    break
        finally:
            if not finished:
                call.cancel()
