"""Stream a chat completion straight from Triton's `ensemble` with tritonclient (no OpenAI frontend).

    python examples/grpc_stream.py [--url 127.0.0.1:8001] [--image photo.jpg] [--n 3] "Describe the image."

Prints the text as it streams, then the finish reason and token counts. With --n, the choices stream interleaved
(each response names its `sequence_index`): each is printed whole when it finishes. See docs/triton-api.md.
"""
import argparse
import base64
import json
import mimetypes
import queue
import sys

import numpy as np
import tritonclient.grpc as grpcclient


def build_inputs(messages, max_tokens, temperature, n=1):
    tensors = {
        "messages": np.array([json.dumps(messages).encode()], dtype=np.object_),
        "max_tokens": np.array([max_tokens], dtype=np.int32),
        "temperature": np.array([temperature], dtype=np.float32),
        "num_return_sequences": np.array([n], dtype=np.int32),
    }
    inputs = []
    for name, value in tensors.items():
        tensor = grpcclient.InferInput(name, list(value.shape), "BYTES" if value.dtype == object else
                                       {np.int32: "INT32", np.float32: "FP32"}[value.dtype.type])
        tensor.set_data_from_numpy(value)
        inputs.append(tensor)
    return inputs


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("prompt")
    parser.add_argument("--url", default="127.0.0.1:8001")
    parser.add_argument("--image", help="a local image file, sent as a base64 data URL")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--n", type=int, default=1, help="choices sharing one prefill (num_return_sequences)")
    args = parser.parse_args()

    content = [{"type": "text", "text": args.prompt}]
    if args.image:
        mime = mimetypes.guess_type(args.image)[0] or "image/png"
        data = base64.b64encode(open(args.image, "rb").read()).decode()
        content.insert(0, {"type": "image_url", "image_url": {"url": f"data:{mime};base64,{data}"}})
    messages = [{"role": "user", "content": content}]

    responses = queue.Queue()
    client = grpcclient.InferenceServerClient(args.url)
    client.start_stream(callback=lambda result, error: responses.put((result, error)))
    try:
        # The ensemble is decoupled: it streams. The empty final response marks the end of the stream.
        client.async_stream_infer("ensemble", build_inputs(messages, args.max_tokens, args.temperature, args.n),
                                  request_id="example-1", enable_empty_final_response=True)
        texts = {}
        while True:
            result, error = responses.get(timeout=300)
            if error is not None:
                print(f"\nerror: {error}", file=sys.stderr)
                return 1
            response = result.get_response()
            if result.as_numpy("text_output") is not None:
                text, index = result.as_numpy("text_output")[0].decode(), int(result.as_numpy("sequence_index")[0])
                texts[index] = texts.get(index, "") + text
                if args.n == 1:
                    print(text, end="", flush=True)
                reason = result.as_numpy("finish_reason")[0].decode()
                if reason:
                    print(f"choice {index}: {texts[index]}" if args.n > 1 else "")
                    print(f"[finish_reason={reason} prompt_tokens={result.as_numpy('prompt_tokens')[0]} "
                          f"completion_tokens={result.as_numpy('completion_tokens')[0]} "
                          f"cached_tokens={result.as_numpy('cached_tokens')[0]}]")
            if response.parameters["triton_final_response"].bool_param:
                return 0
    finally:
        client.stop_stream()   # skipping it hangs the client at exit after an error
        client.close()


if __name__ == "__main__":
    sys.exit(main())
