# GPU image: NVIDIA's Triton + TensorRT-LLM container with this model repository, the OpenAI frontend and
# `make engine`. Triton 26.04 (Ubuntu 24.04, Python 3.12, CUDA 13) with TensorRT-LLM 1.2.1: the last release
# whose trtllm-build and C++ Executor serve this design (docs/gpu.md), and one that runs on Hopper and Blackwell.
# Not buildable on the project's CPU machines (no Docker engine there); see README "GPU deployment".
ARG TRITON_VERSION=26.04
FROM nvcr.io/nvidia/tritonserver:${TRITON_VERSION}-trtllm-python-py3
ARG TRTLLM_VERSION=1.2.1

# Ubuntu 24.04 marks its python3 externally managed (PEP 668); TensorRT-LLM lives in it, so our packages go there.
ENV PIP_BREAK_SYSTEM_PACKAGES=1
# The engine flow, the Executor bindings and the tools' flags were written against one release: a base image
# with another fails here, at build time, not at the first request. (Read from the package's metadata: importing
# tensorrt_llm needs a GPU driver, which `docker build` does not have.)
RUN python3 -c "from importlib.metadata import version; v = version('tensorrt_llm'); \
assert v == '${TRTLLM_VERSION}', f'this base image has TensorRT-LLM {v}, not ${TRTLLM_VERSION}'"

# TensorRT-LLM's Llama conversion and quantization scripts at the version the container ships; the container has
# the tensorrt_llm package and trtllm-build, not the examples. quantize.py needs ModelOpt and `datasets`, both
# TensorRT-LLM 1.2.1 requirements the container has; the examples' own requirements.txt would re-pin them.
RUN git clone --depth 1 --branch v${TRTLLM_VERSION} --filter=blob:none --sparse \
        https://github.com/NVIDIA/TensorRT-LLM.git /opt/tensorrt_llm \
    && git -C /opt/tensorrt_llm sparse-checkout set examples/models/core/llama examples/quantization
ENV TRTLLM_EXAMPLES=/opt/tensorrt_llm/examples

WORKDIR /opt/nanovl
COPY pyproject.toml README.md Makefile ./
COPY nanovl ./nanovl
COPY frontend ./frontend
COPY model_repository ./model_repository
COPY build ./build
COPY examples ./examples
COPY bench ./bench
COPY deploy/entrypoint.sh deploy/serve-requirements.txt ./deploy/

# Two Pythons, because TensorRT-LLM 1.2.1 pins transformers==4.57.1 while the PyTorch vision encoder needs
# transformers >= 5.13 (RadioModel):
# - the container's python3 runs TensorRT-LLM: the conversion steps, trtllm-build, the vision TensorRT build,
#   and tritonserver's stages when serving engines. Our package goes in without its dependencies, so
#   transformers and tokenizers stay at TensorRT-LLM's versions; numpy<2 is what both it and the stub need.
#   `make test-container` runs the tests of what this Python serves under the same versions (Python 3.12,
#   TensorRT-LLM 1.2.1's pins), on a CPU.
RUN pip install --no-cache-dir --no-deps -e . \
    && pip install --no-cache-dir -r deploy/serve-requirements.txt
# - /opt/nanovl/pytorch-venv sees the container's packages, its torch 2.9 included (transformers 5 needs >= 2.6),
#   with transformers 5 and the ONNX tools on top: the vision export of `make engine`, `make bench-gpu`, and
#   serving without engines (PyTorch reference engine and vision encoder on CUDA).
RUN python3 -m venv --system-site-packages /opt/nanovl/pytorch-venv \
    && /opt/nanovl/pytorch-venv/bin/pip install --no-cache-dir 'numpy<2' \
        'transformers>=5.13,<6' 'tokenizers>=0.21' 'onnx>=1.16' 'onnxscript>=0.2' 'onnxruntime>=1.18'

# The container's tritonserver, not the CPU wheel's; the checkpoint is mounted at /models/checkpoint.
ENV NANOVL_TRITONSERVER_DIR=/opt/tritonserver \
    NANOVL_CHECKPOINT=/models/checkpoint \
    NANOVL_REPOSITORY=/opt/nanovl/gpu_repository \
    NANOVL_EXPORT_PYTHON=/opt/nanovl/pytorch-venv/bin/python \
    NANOVL_PYTORCH_PYTHON=/opt/nanovl/pytorch-venv/bin/python \
    PYTHONPATH=/opt/nanovl
# Without engines: the PyTorch reference engine and vision encoder on cuda in bf16. With engines, point
# NANOVL_REPOSITORY at the repository `make engine` wrote (e.g. /models/engine/model_repository).
RUN python3 -m nanovl.serving.triton_config /opt/nanovl/gpu_repository --param device=cuda --param dtype=bfloat16 \
        --instances preprocessing=8
EXPOSE 8000 8001 8002
# NVIDIA's entrypoint first: it runs the image's driver checks (CUDA forward compatibility on older drivers).
ENTRYPOINT ["/opt/nvidia/nvidia_entrypoint.sh", "/opt/nanovl/deploy/entrypoint.sh"]
