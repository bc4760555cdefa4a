# Everything runs from this project's own virtualenv (.venv), created on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TINY := checkpoints/tiny
CHECKPOINT ?= $(TINY)
PORT ?= 8000
PYTEST_ARGS ?=
OUT ?= engines
DTYPE ?= bfloat16
KV_CACHE_DTYPE ?= auto
MAX_BATCH ?= 8
TP ?= 1
VISION ?= tensorrt
# The GPU image's python3 serves the stages and the frontend with TensorRT-LLM engines: Python 3.12 with
# TensorRT-LLM 1.2.1's pins. make test also runs the tests of what it serves under those versions
# (tests/container-requirements.txt; pyenv's 3.12 where the machine has one).
CONTAINER_PYTHON ?= $(firstword $(wildcard $(HOME)/.pyenv/versions/3.12.*/bin/python3.12 /usr/bin/python3.12 /usr/local/bin/python3.12) $(PYTHON))
CVENV ?= .venv-container
CSTAMP := $(CVENV)/.installed
# Every unit test file runs there but those of code the image's python3 does not run, those that need torch at
# import and those of checkers the image lacks (vermin, lint-imports): a new file is in the container run unless
# it is named here.
MAIN_ONLY_TESTS := bench_gpu bench_vision build_engine caching container_python deploy dockerfile import_contracts processors protocol \
	prompt_counts reference sampler vision vision_export vision_tensorrt
LAYERS := core engine serving frontend tooling
CONTAINER_TESTS := $(filter-out $(foreach t,$(MAIN_ONLY_TESTS),$(LAYERS:%=tests/%/test_$(t).py)),\
	$(sort $(foreach layer,$(LAYERS),$(wildcard tests/$(layer)/test_*.py))))
# The venv's Python where there is one; the container's python3 inside the GPU image (bench-gpu there takes
# $NANOVL_PYTORCH_PYTHON, the image's venv with transformers 5).
ENGINE_PY ?= $(if $(wildcard $(BIN)/python),$(BIN)/python,python3)

.PHONY: help install checkpoint serve test test-container configs engine docker clean bench-engine bench-preprocess bench-serve bench-cache bench-gpu bench-vision soak faults

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch pinned to its CPU build; an unpinned torch pulls a CUDA build of several GB.
	$(BIN)/pip install -q torch==2.13.0 -e '.[cpu,serve,test,bench,export,checkpoint]'
	# The tritonserver 2.51 binary and Python backend; its own Python API (and its pins) are not used.
	$(BIN)/pip install -q --no-deps nvidia-pytriton==0.7.0
	touch $@

install: $(STAMP) ## Create .venv with every dependency (CPU torch, tritonserver wheel)

$(TINY)/config.json: $(STAMP) build/tiny_checkpoint.py
	$(BIN)/python -m build.tiny_checkpoint $(TINY)

checkpoint: $(TINY)/config.json ## Generate the tiny random-weight checkpoint in the real format

serve: $(STAMP) $(if $(filter $(TINY),$(CHECKPOINT)),$(TINY)/config.json) ## Serve CHECKPOINT: OpenAI API on :8000, Triton gRPC :8001, metrics :8002
	$(BIN)/python -m nanovl.serving.launch --checkpoint $(CHECKPOINT) --port $(PORT)

$(CSTAMP): tests/container-requirements.txt deploy/serve-requirements.txt
	@$(CONTAINER_PYTHON) -c 'import sys; sys.version_info[:2] == (3, 12) or print(f"WARNING: no Python 3.12 found (set CONTAINER_PYTHON): the container run uses Python {sys.version.split()[0]}, not the image'"'"'s 3.12")'
	$(CONTAINER_PYTHON) -m venv $(CVENV)
	$(CVENV)/bin/pip install -q --upgrade pip
	$(CVENV)/bin/pip install -q -r tests/container-requirements.txt
	touch $@

test: $(STAMP) $(CSTAMP) $(TINY)/config.json ## Run the whole test suite (unit + a real tritonserver and frontend), then test-container (not with PYTEST_ARGS)
	NANOVL_CONTAINER_PYTHON=$(abspath $(CVENV))/bin/python $(BIN)/python -m pytest -q $(PYTEST_ARGS)
	$(if $(PYTEST_ARGS),,$(MAKE) --no-print-directory test-container)

test-container: $(CSTAMP) $(TINY)/config.json ## The tests of what the GPU image's python3 serves, under its versions (Python 3.12, transformers 4.57.1, ...)
	@$(CVENV)/bin/python -c 'import sys, transformers, PIL, openai, numpy; print(f"test-container: Python {sys.version.split()[0]}, transformers {transformers.__version__}, Pillow {PIL.__version__}, openai {openai.__version__}, numpy {numpy.__version__}")'
	$(CVENV)/bin/python -m compileall -q nanovl frontend model_repository build bench examples
	NANOVL_TEST_CHECKPOINT=$(abspath $(TINY)) $(CVENV)/bin/python -m pytest -q -m "not needs_torch" $(CONTAINER_TESTS)

configs: $(STAMP) ## Regenerate model_repository/*/config.pbtxt from nanovl/serving/tensors.py
	$(BIN)/python -m nanovl.serving.triton_config model_repository

engine: ## TensorRT-LLM engine, vision TensorRT engine and a filled model repository from CHECKPOINT into OUT (DTYPE=bfloat16|fp8|nvfp4, KV_CACHE_DTYPE=auto|fp8|bfloat16, CALIB_DATASET, MAX_BATCH, TP, VISION=tensorrt|pytorch; DRY_RUN=1: plan only, no GPU)
	$(ENGINE_PY) -m build.engine --checkpoint $(CHECKPOINT) --out $(OUT) --dtype $(DTYPE) --kv-cache-dtype $(KV_CACHE_DTYPE) --max-batch $(MAX_BATCH) --tp $(TP) --vision $(VISION) $(if $(CALIB_DATASET),--calib-dataset $(CALIB_DATASET)) $(if $(DRY_RUN),--dry-run)

docker: ## Build the GPU image on NVIDIA's Triton + TensorRT-LLM container (needs a Docker engine)
	docker build -t nanovl-triton:latest .

clean: ## Remove the virtualenvs, generated checkpoints and run files
	rm -rf $(VENV) $(CVENV) checkpoints .run

bench-engine: $(TINY)/config.json ## Tokens/s of our engine vs transformers' continuous batching at 1, 8, 32 clients
	$(BIN)/python -m bench.engine --checkpoint $(TINY)

bench-serve: $(TINY)/config.json ## Streamed tok/s + TTFT at 1/16/64 clients: frontend+Triton vs engine in-process vs transformers serve
	$(BIN)/python -m bench.serve --checkpoint $(TINY)

bench-cache: $(TINY)/config.json ## TTFT of turns 2-3 vs 1 of an image conversation (1, 8 at once); 16 clients sharing a system prompt vs distinct
	$(BIN)/python -m bench.cache --checkpoint $(TINY)

soak: $(TINY)/config.json ## 5 rounds of 64 concurrent streams (text + images): zero errors, memory flat after round 1
	$(BIN)/python -m bench.soak --checkpoint $(TINY)

faults: $(STAMP) ## The fault tests alone: stage stubs and tritonserver killed, streams on a dead llm
	$(BIN)/python -m pytest -q tests/integration/test_faults.py

bench-gpu: ## On a GPU: vision tiles/s, prefill and decode tok/s at the real size (random weights) vs the device's peaks
	$(if $(NANOVL_PYTORCH_PYTHON),$(NANOVL_PYTORCH_PYTHON),$(ENGINE_PY)) -m bench.gpu --device $(if $(DEVICE),$(DEVICE),cuda)

bench-vision: $(TINY)/config.json ## Tiles/s of the vision runtimes side by side: PyTorch vs onnxruntime (+ TensorRT with PLAN=)
	$(BIN)/python -m bench.vision --checkpoint $(CHECKPOINT) $(if $(PLAN),--plan $(PLAN))

bench-preprocess: $(STAMP) ## Images/s of our tiling vs the straightforward reference (one core, identical tiles)
	$(BIN)/python -m bench.preprocess
