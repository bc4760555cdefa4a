"""Control requests to llm: the inputs they carry and the status answer, as both sides read them."""
from __future__ import annotations

import numpy as np

from nanovl.serving import control, tensors


def test_stop_and_status_requests_carry_the_request_id():
    assert control.stop_inputs("r-1")[tensors.STOP_REQUEST.name].tolist() == [b"r-1"]
    assert control.status_inputs("r-2")[tensors.STATUS_REQUEST.name].tolist() == [b"r-2"]


def test_the_status_answer_reads_back_as_sent():
    status = control.RequestStatus(known=True, loaded_at=1700000000.25)
    outputs = control.status_outputs(status)
    assert {name: array.dtype for name, array in outputs.items()} == {
        tensors.REQUEST_KNOWN.name: np.bool_, tensors.LOADED_AT.name: np.float64}
    assert control.read_status(outputs) == status


def test_a_request_is_lost_only_to_an_llm_loaded_after_it_began():
    started = 100.0
    assert control.RequestStatus(known=False, loaded_at=150.0).lost(started)        # llm reloaded meanwhile
    assert not control.RequestStatus(known=False, loaded_at=50.0).lost(started)     # not there yet, or done
    assert not control.RequestStatus(known=True, loaded_at=150.0).lost(started)


def test_llm_declares_the_status_outputs():
    inputs, outputs = tensors.MODELS["llm"]
    assert {tensors.STOP_REQUEST, tensors.STATUS_REQUEST} <= set(inputs)
    assert {tensors.REQUEST_KNOWN, tensors.LOADED_AT} <= set(outputs)
