"""Control requests to the llm stage: stop a stream by its request id, or ask whether llm still has it.

They are explicit inputs and outputs of llm (nanovl.serving.tensors, docs/triton-api.md): a request carrying
`stop_request` or `status_request` generates nothing and is answered at once.

Why a stop request exists at all (the one place this is explained): on tritonserver 2.51 a client's cancel of
an ensemble stream never reaches the decoupled llm inside it, so its engine slot would stay busy until
max_tokens. Whoever sees the client leave sends llm a stop naming the Triton request id, which every stage of
the ensemble shares: the frontend when its HTTP client goes away, the detokenizer when its own request reports
is_cancelled() (a direct gRPC client of the ensemble). Newer servers do deliver the cancel; llm polls
is_cancelled() too, so both paths stay.

Why a status request exists: a request in flight when llm's stub died is never answered (2.51 sends no
error, and the supervisor's reload starts a stub that never heard of it). A client whose stream goes silent
asks; a stage loaded after the request began does not know it: the request is lost.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import tensors
from .client import TritonClient, bytes_tensor

LLM = "llm"


@dataclass(frozen=True)
class RequestStatus:
    known: bool          # a stream with this request id is generating or waiting
    loaded_at: float     # unix time the llm stage (this stub) loaded

    def lost(self, request_started: float) -> bool:
        """Unknown to an llm loaded after the request began: lost. Unknown to an older llm: not there yet (a
        slow image fetch) or already finished."""
        return not self.known and self.loaded_at > request_started


def stop_inputs(request_id: str) -> dict[str, np.ndarray]:
    return {tensors.STOP_REQUEST.name: bytes_tensor(request_id)}


def status_inputs(request_id: str) -> dict[str, np.ndarray]:
    return {tensors.STATUS_REQUEST.name: bytes_tensor(request_id)}


def status_outputs(status: RequestStatus) -> dict[str, np.ndarray]:
    """llm's answer to a status request."""
    return {tensors.REQUEST_KNOWN.name: np.array([status.known], np.bool_),
            tensors.LOADED_AT.name: np.array([status.loaded_at], np.float64)}


def read_status(outputs: dict[str, np.ndarray]) -> RequestStatus:
    return RequestStatus(bool(outputs[tensors.REQUEST_KNOWN.name].reshape(-1)[0]),
                         float(outputs[tensors.LOADED_AT.name].reshape(-1)[0]))


async def send_stop(client: TritonClient, request_id: str, timeout: float = 10.0) -> None:
    """Ends llm's stream of this request id (its slot is free at the next engine step); unknown ids are a no-op."""
    async for _ in client.stream(LLM, stop_inputs(request_id), timeout=timeout):
        pass


async def ask_status(client: TritonClient, request_id: str, timeout: float = 5.0) -> RequestStatus:
    """Raises TritonStreamError when llm cannot answer (its stub is dead), grpc.RpcError when the server can't."""
    status = None
    async for out in client.stream(LLM, status_inputs(request_id), timeout=timeout,
                                   outputs=(tensors.REQUEST_KNOWN.name, tensors.LOADED_AT.name)):
        if tensors.REQUEST_KNOWN.name in out:
            status = read_status(out)
    if status is None:
        raise RuntimeError(f"llm answered the status request for {request_id!r} without a status")
    return status
