from nanovl.core.errors import ClientError, ServerError, from_wire


def test_client_error_survives_an_ensemble_prefix():
    wire = ClientError("image 2: not a decodable image", param="messages", code="invalid_image").to_wire()
    got = from_wire(f"in ensemble 'ensemble', {wire}")
    assert (got.status, got.type, got.message, got.param, got.code) == \
        (400, "invalid_request_error", "image 2: not a decodable image", "messages", "invalid_image")


def test_untagged_message_is_a_server_error():
    got = from_wire("Stub process 'llm_0_0' is not healthy.")
    assert got.status == 500 and "not healthy" in got.message
    assert from_wire(ServerError("boom").to_wire()).status == 500
