"""Requests generated from the app's own OpenAPI schema by schemathesis, valid and invalid, sent to the running
frontend: whatever arrives, no 5xx. A bounded number of examples keeps it well under a minute."""
import pytest

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402

from frontend.app import create_app  # noqa: E402

SCHEMA = create_app().openapi()
OPERATIONS = [(method.upper(), path) for path, item in SCHEMA["paths"].items() for method in item]
# Invalid data for the operations that take a body; the GETs take no input to get wrong.
CASES = [(m, p, mode) for m, p in OPERATIONS for mode in (("positive", "negative") if m == "POST" else ("positive",))]
# Generated lengths can be anything; a few tokens per request keeps the run short (long generations, huge
# limits and the context bound have their own tests).
MOST_TOKENS = 4


def _shorten(body) -> None:
    if isinstance(body, dict):
        for name in ("max_tokens", "max_completion_tokens", "min_tokens"):
            if isinstance(body.get(name), int) and body[name] > MOST_TOKENS:
                body[name] = MOST_TOKENS
        body.setdefault("max_tokens", MOST_TOKENS)


@pytest.mark.parametrize("method, path, mode", CASES)
def test_no_generated_request_gets_a_server_error(stack, method, path, mode):
    operation = schemathesis.openapi.from_dict(SCHEMA).find_operation_by_path(method, path)
    base_url = f"http://127.0.0.1:{stack.port}"

    @given(case=operation.as_strategy(generation_mode=schemathesis.GenerationMode(mode)))
    @settings(max_examples=60 if method == "POST" else 5, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    def check(case):
        _shorten(case.body)
        response = case.call(base_url=base_url, timeout=30)
        assert response.status_code < 500, (case.body, response.status_code, response.text[:500])

    check()
