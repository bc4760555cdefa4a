"""SamplingParams is where sampling ranges are checked (the frontend and the llm stage both build one)."""
import pytest

from nanovl.core.errors import ClientError
from nanovl.core.limits import INT32_MAX, INT64_MAX, MAX_STOP_STRINGS
from nanovl.engine.request import SamplingParams


def test_vllm_top_k_minus_one_is_stored_as_off():
    params = SamplingParams(top_k=-1)
    assert params.top_k == 0 and not params.greedy


@pytest.mark.parametrize("field, value", [("max_tokens", INT32_MAX + 1), ("top_k", INT32_MAX + 1),
                                          ("stop_token_ids", (1, INT32_MAX + 1)), ("stop_token_ids", (-1,)),
                                          ("seed", INT64_MAX + 1), ("min_tokens", -1),
                                          ("stop", ("s",) * (MAX_STOP_STRINGS + 1))])
def test_values_the_wire_cannot_carry_are_client_errors_naming_the_field(field, value):
    with pytest.raises(ClientError) as error:
        SamplingParams(**{field: value})
    assert error.value.param == field and error.value.status == 400


def test_the_wire_bounds_themselves_are_accepted():
    params = SamplingParams(max_tokens=INT32_MAX, top_k=INT32_MAX, seed=INT64_MAX, stop_token_ids=(0, INT32_MAX),
                            stop=("s",) * MAX_STOP_STRINGS)
    assert (params.max_tokens, params.top_k, params.seed) == (INT32_MAX, INT32_MAX, INT64_MAX)


def test_n_is_bounded_and_each_choice_has_its_own_seed():
    for bad in (0, 17):
        with pytest.raises(ClientError) as info:
            SamplingParams(n=bad)
        assert info.value.param == "n"
    params = SamplingParams(n=4, seed=7)
    seeds = [params.choice_seed(i) for i in range(4)]
    assert seeds[0] == 7 and len(set(seeds)) == 4 and SamplingParams(seed=8).choice_seed(0) not in seeds
    assert SamplingParams(n=4).choice_seed(2) is None   # unseeded: every choice draws from fresh entropy
