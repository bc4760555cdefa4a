"""LangChain's ChatOpenAI against the endpoint, with the image message NIM's docs show (text + image_url parts)."""
import pytest

from tests.integration.conftest import MODEL, data_url

langchain_openai = pytest.importorskip("langchain_openai")


@pytest.fixture(scope="module")
def llm(stack):
    return langchain_openai.ChatOpenAI(model=MODEL, base_url=f"http://127.0.0.1:{stack.port}/v1", api_key="unused",
                                       max_tokens=12, temperature=0, max_retries=0)


def image_message():
    from langchain_core.messages import HumanMessage

    return HumanMessage(content=[{"type": "text", "text": "Describe the image."},
                                 {"type": "image_url", "image_url": {"url": data_url(200, 150)}}])


def test_invoke_and_stream_give_the_same_text(llm):
    reply = llm.invoke([image_message()])
    assert isinstance(reply.content, str) and reply.usage_metadata["output_tokens"] >= 1
    assert "".join(chunk.content for chunk in llm.stream([image_message()])) == reply.content


def test_a_plain_string_prompt(llm):
    assert llm.invoke("Hello there").response_metadata["finish_reason"] in ("stop", "length")
