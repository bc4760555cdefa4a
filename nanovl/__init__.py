"""The Llama-3.1-Nemotron-Nano-VL serving stack, in three layers whose imports point one way:

    core     the model's domain: checkpoint, images, fetch, tiling, prompt, vision, detokenize, stop, errors
    engine   requests, scheduling, KV blocks, sampling, the reference and TensorRT-LLM engines (imports core)
    serving  Triton tensors and stage parameters, the generation service, client, launch, supervisor
             (imports engine and core)

`frontend/` and `model_repository/` sit on top. The contract is in pyproject.toml ([tool.importlinter]).
"""
