# GPU image: NVIDIA's Triton + TensorRT-LLM container with this model repository, the OpenAI frontend and
# `make engine`. Pinned to 24.10 (tritonserver 2.51, the server the CPU tests run) with TensorRT-LLM 0.14.
# Not buildable on the project's CPU machines (no Docker engine there); see README "GPU deployment".
FROM nvcr.io/nvidia/tritonserver:24.10-trtllm-python-py3

# TensorRT-LLM's Llama conversion and FP8 quantization scripts at the version the container ships; the
# container has the tensorrt_llm package and trtllm-build, not the examples. quantize.py on a Hugging Face
# checkpoint needs ModelOpt (a tensorrt_llm dependency) and `datasets`; its requirements.txt would pull NeMo
# and re-pin tensorrt_llm, so it is not installed.
ARG TRTLLM_VERSION=v0.14.0
RUN git clone --depth 1 --branch ${TRTLLM_VERSION} --filter=blob:none --sparse \
        https://github.com/NVIDIA/TensorRT-LLM.git /opt/tensorrt_llm \
    && git -C /opt/tensorrt_llm sparse-checkout set examples/llama examples/quantization \
    && pip install --no-cache-dir datasets
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

# Two Pythons, because TensorRT-LLM 0.14 pins transformers <= 4.45 (and tokenizers to match) while the PyTorch
# vision encoder needs transformers >= 5.13 (RadioModel):
# - the container's python3 runs TensorRT-LLM: the conversion steps, trtllm-build, the vision TensorRT build,
#   and tritonserver's stages when serving engines. Our package goes in without its dependencies, so
#   transformers and tokenizers stay at TensorRT-LLM's versions; numpy<2 is what both it and the 2.51 stub need.
#   `make test-container` runs the tests of what this Python serves under the same versions (Python 3.10,
#   TensorRT-LLM 0.14's pins), on a CPU.
RUN pip install --no-cache-dir --no-deps -e . \
    && pip install --no-cache-dir -r deploy/serve-requirements.txt
# - /opt/nanovl/pytorch-venv sees the container's packages with transformers 5 and the ONNX tools on top: the
#   vision export of `make engine`, and serving without engines (PyTorch reference engine and vision encoder on
#   CUDA). transformers 5 turns PyTorch off below 2.6 (RadioModel then refuses to load) and the container's
#   torch is 2.4, so the venv has a torch of its own: PyPI's CUDA 12.8 build, which CUDA 12.x drivers run, with
#   its matching torchvision (the container's was built for 2.4 and would fail to load beside it).
RUN python3 -m venv --system-site-packages /opt/nanovl/pytorch-venv \
    && /opt/nanovl/pytorch-venv/bin/pip install --no-cache-dir torch==2.9.1 torchvision==0.24.1 'numpy<2' \
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
