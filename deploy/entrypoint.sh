#!/bin/sh
# The image's entrypoint: serve $NANOVL_REPOSITORY with the Python its stages need. The launcher's interpreter
# is the one tritonserver's Python stages run (nanovl.serving.launch puts it first on PATH): a repository of engines
# (`make engine`: engine=tensorrt_llm) needs the container's python3 with TensorRT-LLM; one that runs the
# PyTorch reference engine or vision encoder needs transformers 5, in $NANOVL_PYTORCH_PYTHON's venv.
set -eu
repository="${NANOVL_REPOSITORY:?set NANOVL_REPOSITORY to a model repository}"
if grep -q 'string_value: "tensorrt_llm"' "$repository/llm/config.pbtxt"; then
    python=python3
else
    python="${NANOVL_PYTORCH_PYTHON:-python3}"
fi
exec "$python" -m nanovl.serving.launch --repository "$repository" "$@"
