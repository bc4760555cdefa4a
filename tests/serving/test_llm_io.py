"""The llm stage's request tensors -> GenerationService arguments: n, cache_salt and prompt_extra_ids checked
where a direct gRPC client's request arrives."""
import numpy as np
import pytest

from nanovl.core.errors import ClientError
from nanovl.serving import tensors as T
from nanovl.serving.llm_io import read_request


def inputs(**values):
    arrays = {T.INPUT_IDS.name: np.arange(1, 9, dtype=np.int32), **values}
    return lambda name: arrays.get(name)


def test_n_salt_and_extra_ids_reach_the_request(config):
    extra = np.zeros(8, np.int64)
    request = read_request(inputs(num_return_sequences=np.array([3], np.int32), prompt_extra_ids=extra,
                                  cache_salt=np.array(["tenant".encode()], np.object_)), config)
    assert request.sampling.n == 3 and request.cache_salt == "tenant"
    assert request.prompt_extra_ids.dtype == np.int64 and len(request.prompt_extra_ids) == 8
    plain = read_request(inputs(), config)
    assert plain.sampling.n == 1 and plain.cache_salt is None and plain.prompt_extra_ids is None


@pytest.mark.parametrize("values, param", [
    ({"num_return_sequences": np.array([17], np.int32)}, "n"),
    ({"num_return_sequences": np.array([0], np.int32)}, "n"),
    ({"cache_salt": np.array([b""], np.object_)}, "cache_salt"),
    ({"cache_salt": np.array([b"x" * 257], np.object_)}, "cache_salt"),
    ({"cache_salt": np.array([b"\xff"], np.object_)}, "cache_salt"),
    ({"prompt_extra_ids": np.zeros(7, np.int64)}, "prompt_extra_ids"),
])
def test_bad_values_are_client_errors_naming_the_input(config, values, param):
    with pytest.raises(ClientError) as info:
        read_request(inputs(**values), config)
    assert info.value.param == param
