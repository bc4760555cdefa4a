# GPU image: NVIDIA's Triton + TensorRT-LLM container with this model repository and the OpenAI frontend.
# Pinned to 24.10 (tritonserver 2.51, the server the CPU tests run) with TensorRT-LLM 0.14.
# Not buildable on the project's CPU machines (no Docker engine there); see README "GPU deployment".
FROM nvcr.io/nvidia/tritonserver:24.10-trtllm-python-py3

WORKDIR /opt/nanovl
COPY pyproject.toml README.md ./
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
    PYTHONPATH=/opt/nanovl
# Stage configs for GPU: torch on cuda in bf16, then serve (OpenAI 8000, gRPC 8001, metrics 8002).
RUN python3 -m nanovl.triton_config /opt/nanovl/gpu_repository --param device=cuda --param dtype=bfloat16
EXPOSE 8000 8001 8002
ENTRYPOINT ["python3", "-m", "nanovl.launch", "--repository", "/opt/nanovl/gpu_repository"]
