# GPU image: NVIDIA's Triton + TensorRT-LLM container with this model repository, the OpenAI frontend and
# `make engine`. Pinned to 24.10 (tritonserver 2.51, the server the CPU tests run) with TensorRT-LLM 0.14.
# Not buildable on the project's CPU machines (no Docker engine there); see README "GPU deployment".
FROM nvcr.io/nvidia/tritonserver:24.10-trtllm-python-py3

# TensorRT-LLM's Llama conversion and FP8 quantization scripts at the version the container ships; the
# container has the tensorrt_llm package and trtllm-build, not the examples.
ARG TRTLLM_VERSION=v0.14.0
RUN git clone --depth 1 --branch ${TRTLLM_VERSION} --filter=blob:none --sparse \
        https://github.com/NVIDIA/TensorRT-LLM.git /opt/tensorrt_llm \
    && git -C /opt/tensorrt_llm sparse-checkout set examples/llama examples/quantization \
    && pip install --no-cache-dir -r /opt/tensorrt_llm/examples/quantization/requirements.txt
ENV TRTLLM_EXAMPLES=/opt/tensorrt_llm/examples

WORKDIR /opt/nanovl
COPY pyproject.toml README.md Makefile ./
COPY nanovl ./nanovl
COPY frontend ./frontend
COPY model_repository ./model_repository
COPY build ./build
COPY examples ./examples
# The container's own torch (CUDA) stays; numpy<2 is what the Python backend stub of 2.51 needs.
RUN pip install --no-cache-dir 'numpy<2' -e '.[serve]'

# The container's tritonserver, not the CPU wheel's; the checkpoint is mounted at /models/checkpoint.
ENV NANOVL_TRITONSERVER_DIR=/opt/tritonserver \
    NANOVL_CHECKPOINT=/models/checkpoint \
    NANOVL_REPOSITORY=/opt/nanovl/gpu_repository \
    PYTHONPATH=/opt/nanovl
# Without engines: the PyTorch reference engine on cuda in bf16. With engines, point NANOVL_REPOSITORY at
# the repository `make engine` wrote (e.g. /models/engine/model_repository: engine=tensorrt_llm).
RUN python3 -m nanovl.triton_config /opt/nanovl/gpu_repository --param device=cuda --param dtype=bfloat16
EXPOSE 8000 8001 8002
ENTRYPOINT ["/bin/sh", "-c", "exec python3 -m nanovl.launch --repository \"$NANOVL_REPOSITORY\" \"$@\"", "nanovl"]
