"""Images end to end through the OpenAI endpoint: remote URLs, `<img>` tags, refusals, and greedy tokens equal to
a reference greedy loop over transformers' LlamaForCausalLM fed the reference vision embeddings."""
import base64
import io
from http.server import BaseHTTPRequestHandler

import httpx
import numpy as np
import pytest
import torch
from openai import BadRequestError
from PIL import Image

from tests.integration.conftest import MODEL, data_url
from tests.core.test_fetch import http_server
from tests.core.test_vision import reference_embeddings

_IMAGE = Image.fromarray(np.random.default_rng(5).integers(0, 256, (300, 420, 3), dtype=np.uint8))


class _Images(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        body = io.BytesIO()
        _IMAGE.save(body, "PNG")
        ok = self.path == "/photo.png"
        self.send_response(200 if ok else 404)
        self.send_header("Content-Type", "image/png" if ok else "text/plain")
        data = body.getvalue() if ok else b"missing"
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture(scope="module")
def image_server():
    with http_server(_Images) as url:
        yield url


def reference_greedy(hf_llm, config, tokenizer, image, text, max_new_tokens):
    """The prompt of the model's chat() with `<img><image>*N</img>` expanded, embeddings from the reference
    vision forward at the image positions, then a plain greedy loop without a KV cache."""
    from nanovl.core.tiling import tile_image

    tiles = tile_image(image)
    span = "<img>" + "<image>" * (len(tiles) * config.tokens_per_tile) + "</img>"
    rendered = tokenizer.apply_chat_template([{"role": "user", "content": span + "\n" + text}], tokenize=False,
                                             add_generation_prompt=True)
    ids = torch.tensor(tokenizer(rendered, add_special_tokens=False).input_ids)
    vision = reference_embeddings(config, torch.from_numpy(tiles)).reshape(-1, config.llm_hidden_size)
    embed = hf_llm.get_input_embeddings()
    out = []
    with torch.no_grad():
        embeds = embed(ids)
        embeds[ids == tokenizer.convert_tokens_to_ids("<image>")] = vision
        for _ in range(max_new_tokens):
            token = int(hf_llm(inputs_embeds=embeds[None]).logits[0, -1].argmax())
            if token in config.eos_token_ids:
                break
            out.append(token)
            embeds = torch.cat([embeds, embed(torch.tensor([token]))])
    return out


@pytest.mark.parametrize("how", ["data_url", "http_url", "img_tag"])
def test_greedy_image_answer_equals_the_reference(openai_client, hf_llm, config, tokenizer, image_server, how):
    buffer = io.BytesIO()
    _IMAGE.save(buffer, "PNG")
    url = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
    if how == "http_url":
        url = f"{image_server}/photo.png"
    text = "Describe the image."
    content = ([{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": text}]
               if how != "img_tag" else f'<img src="{url}" />\n{text}')
    reply = openai_client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": content}],
                                                  max_tokens=12, temperature=0)
    expected = reference_greedy(hf_llm, config, tokenizer, _IMAGE, text, 12)
    assert reply.choices[0].message.content == tokenizer.decode(expected, skip_special_tokens=True)


@pytest.mark.parametrize("url, words", [
    ("{server}/missing.png", "image 1: fetching the URL failed: HTTP 404"),
    ("ftp://example.com/x.png", "image 1: URL scheme 'ftp' is not accepted"),
    ("data:image/png;base64,aGVsbG8=", "image 1: not a decodable image"),
])
def test_a_bad_second_image_is_a_400_naming_it(openai_client, image_server, url, words):
    content = [{"type": "image_url", "image_url": {"url": data_url(64, 64)}},
               {"type": "image_url", "image_url": {"url": url.format(server=image_server)}},
               {"type": "text", "text": "Compare."}]
    with pytest.raises(BadRequestError) as info:
        openai_client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": content}])
    assert words in info.value.message


def test_too_many_images_and_too_long_prompts_are_400(openai_client):
    five = [{"type": "image_url", "image_url": {"url": data_url(32, 32)}} for _ in range(5)]
    with pytest.raises(BadRequestError, match="5 images in one request; at most 4"):
        openai_client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": five}])
    big = [{"type": "image_url", "image_url": {"url": data_url(640, 480)}} for _ in range(4)]
    turns = [{"role": "user", "content": big}, {"role": "assistant", "content": "ok"},
             {"role": "user", "content": "word " * (16384 - 52 * 256)}]   # one token a ' word': past the context
    with pytest.raises(BadRequestError, match=r"image tokens for 4 images of 52 tiles\); the context holds 16384"):
        openai_client.chat.completions.create(model=MODEL, messages=turns)
    assert openai_client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "ok"}],
                                                 max_tokens=2).choices


def test_concurrent_image_requests_share_vision_encoder_batches(stack):
    """Triton's dynamic batcher hands the vision encoder several requests per execute(): fewer executions
    than requests (Triton's own statistics)."""
    import asyncio

    from openai import AsyncOpenAI

    def counts():
        stats = httpx.get(f"http://127.0.0.1:{stack.http_port}/v2/models/vision_encoder/stats").json()
        model = stats["model_stats"][0]
        return model["inference_count"], model["execution_count"]

    before = counts()

    async def burst():
        client = AsyncOpenAI(base_url=f"http://127.0.0.1:{stack.port}/v1", api_key="unused", max_retries=0)
        content = [{"type": "image_url", "image_url": {"url": data_url(640, 480)}}, {"type": "text", "text": "hi"}]
        await asyncio.gather(*(client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": content if i % 2 else "text only"}], max_tokens=2)
            for i in range(12)))
    asyncio.run(burst())
    after = counts()
    requests, executions = after[0] - before[0], after[1] - before[1]
    # The supervisor's probes may add a request (and an execution) of their own.
    assert requests >= 12 and executions < requests
