"""Generates every config.pbtxt of the model repository from `nanovl.serving.tensors`.

    python -m nanovl.serving.triton_config OUT_REPOSITORY [--checkpoint DIR] [--param KEY=VALUE ...]

With no checkpoint the configs leave `checkpoint_dir` empty and the models read $NANOVL_CHECKPOINT; that is
what `model_repository/` holds. `make engine` writes a filled-in copy.
"""
from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from ..engine.factory import EngineSettings
from ..core.preprocess import PreprocessSettings
from ..core.vision_runtimes import VisionSettings
from .parameters import as_parameters
from .tensors import DECOUPLED, MODELS, Tensor

REPOSITORY = Path(__file__).resolve().parents[2] / "model_repository"
STAGES = ("preprocessing", "vision_encoder", "llm", "detokenizer")


# Every stage parameter with its default; the settings dataclasses hold the choices, documented there. The
# detokenizer must stay at one instance: more would reorder a stream's responses (tritonserver-cpu.md).
DEFAULT_PARAMETERS = {
    "preprocessing": {"checkpoint_dir": "", **as_parameters(PreprocessSettings())},
    "vision_encoder": {"checkpoint_dir": "", **as_parameters(VisionSettings())},
    "llm": {"checkpoint_dir": "", **as_parameters(EngineSettings())},
    "detokenizer": {"checkpoint_dir": ""},
}
INSTANCES = {"preprocessing": 2, "vision_encoder": 1, "llm": 1, "detokenizer": 1}
# Stages whose instance count a deployment may change: the llm owns the engine (one per GPU set) and the
# detokenizer must keep stream order.
SCALABLE = ("preprocessing",)


def _tensor(t: Tensor, kind: str, ragged: bool = False) -> str:
    dims = ", ".join(str(d) for d in t.dims)
    optional = "\n    optional: true" if t.optional and kind == "input" else ""
    optional += "\n    allow_ragged_batch: true" if ragged and kind == "input" else ""
    return f"  {{\n    name: \"{t.name}\"\n    data_type: {t.dtype}\n    dims: [ {dims} ]{optional}\n  }}"


def _io(kind: str, tensors, ragged: bool = False) -> str:
    return f"{kind} [\n" + ",\n".join(_tensor(t, kind, ragged) for t in tensors) + "\n]\n"


# The vision encoder takes Triton's dynamic batching: requests waiting together reach one execute() and
# one encoder forward. Their tensors carry a leading batch dim of 1 (TensorRT-LLM's prompt-table layout);
# tiles are ragged (each request has its own tile count, 0 for text-only).
# Four requests (up to 52 tiles) per batch: the Python backend's shared-memory pools grow to the largest batch
# that passed and never shrink; with 16 they had not levelled off after 5 soak rounds, with 4 they did after 3
# at no cost in soak throughput (docs/reliability.md).
BATCHED = {"vision_encoder": (4, 2000)}   # stage: (max_batch_size, max queue delay in microseconds)


def _without_batch_dim(t: Tensor) -> Tensor:
    return Tensor(t.name, t.dtype, t.dims[1:], t.optional, t.doc)


def stage_config(name: str, parameters: dict[str, str], instances: int | None = None) -> str:
    inputs, outputs = MODELS[name]
    if name in BATCHED:
        inputs, outputs = [_without_batch_dim(t) for t in inputs], [_without_batch_dim(t) for t in outputs]
        max_batch, delay_us = BATCHED[name]
        text = f'name: "{name}"\nbackend: "python"\nmax_batch_size: {max_batch}\n'
        text += f"dynamic_batching {{\n  max_queue_delay_microseconds: {delay_us}\n}}\n"
    else:
        text = f'name: "{name}"\nbackend: "python"\nmax_batch_size: 0\n'
    if name in DECOUPLED:
        text += "model_transaction_policy {\n  decoupled: true\n}\n"
    text += _io("input", inputs, ragged=name in BATCHED) + _io("output", outputs)
    text += f"instance_group [\n  {{\n    count: {instances or INSTANCES[name]}\n    kind: KIND_CPU\n  }}\n]\n"
    for key, value in sorted(parameters.items()):
        text += f'parameters {{\n  key: "{key}"\n  value: {{ string_value: "{value}" }}\n}}\n'
    return text


def _step(model: str, input_map: dict[str, str], output_map: dict[str, str]) -> str:
    def maps(kind, mapping):
        return "".join(f'      {kind} {{ key: "{k}" value: "{v}" }}\n' for k, v in mapping.items())
    return (f'    {{\n      model_name: "{model}"\n      model_version: -1\n'
            + maps("input_map", input_map) + maps("output_map", output_map) + "    }")


def ensemble_config() -> str:
    """Every tensor keeps its name across steps; those passed between stages get a '_' prefix. A stage output
    that no later stage reads (llm's control replies) stays out of the ensemble."""
    inputs, outputs = MODELS["ensemble"]
    public_inputs = {t.name for t in inputs}
    read_later = {t.name for stage in STAGES[1:] for t in MODELS[stage][0]}
    produced: set[str] = set()
    steps = []
    for stage in STAGES:
        stage_in, stage_out = MODELS[stage]
        in_map = {}
        for t in stage_in:
            if t.name in public_inputs and t.name in produced:
                raise ValueError(f"ensemble: {t.name!r} is both an ensemble input and a stage output")
            if t.name in public_inputs or t.name in produced:
                in_map[t.name] = t.name if t.name in public_inputs else f"_{t.name}"
            elif not t.optional:
                raise ValueError(f"ensemble: nothing feeds required input {t.name!r} of {stage}")
        if stage != STAGES[-1]:
            stage_out = tuple(t for t in stage_out if t.name in read_later)
        out_map = {t.name: t.name if stage == STAGES[-1] else f"_{t.name}" for t in stage_out}
        produced |= {t.name for t in stage_out}
        steps.append(_step(stage, in_map, out_map))
    text = 'name: "ensemble"\nplatform: "ensemble"\nmax_batch_size: 0\n'
    text += _io("input", inputs) + _io("output", outputs)
    return text + "ensemble_scheduling {\n  step [\n" + ",\n".join(steps) + "\n  ]\n}\n"


def write_repository(out: Path, overrides: dict[str, str] | None = None,
                     instances: dict[str, int] | None = None) -> None:
    """Writes configs (and, for a fresh folder, copies the model.py adapters) into `out`; `instances` changes
    the instance count of SCALABLE stages."""
    wrong = set(instances or {}) - set(SCALABLE)
    if wrong:
        raise ValueError(f"instance counts of {sorted(wrong)} cannot change (only {', '.join(SCALABLE)})")
    out.mkdir(parents=True, exist_ok=True)
    for stage in STAGES:
        model_dir = out / stage
        if out.resolve() != REPOSITORY:
            shutil.copytree(REPOSITORY / stage / "1", model_dir / "1", dirs_exist_ok=True,
                            ignore=shutil.ignore_patterns("__pycache__"))
        parameters = dict(DEFAULT_PARAMETERS[stage])
        parameters.update({k: v for k, v in (overrides or {}).items() if k in parameters})
        (model_dir / "config.pbtxt").write_text(stage_config(stage, parameters, (instances or {}).get(stage)))
    (out / "ensemble" / "1").mkdir(parents=True, exist_ok=True)
    (out / "ensemble" / "config.pbtxt").write_text(ensemble_config())


def main() -> None:
    parser = argparse.ArgumentParser(description="Generate the model repository's configs")
    parser.add_argument("out", type=Path)
    parser.add_argument("--checkpoint", default="")
    parser.add_argument("--param", action="append", default=[], help="KEY=VALUE for any stage parameter")
    parser.add_argument("--instances", action="append", default=[],
                        help=f"STAGE=N instances of a stage ({', '.join(SCALABLE)})")
    args = parser.parse_args()
    overrides = dict(p.split("=", 1) for p in args.param)
    if args.checkpoint:
        overrides["checkpoint_dir"] = str(Path(args.checkpoint).resolve())
    instances = {stage: int(n) for stage, n in (p.split("=", 1) for p in args.instances)}
    try:
        write_repository(args.out, overrides, instances)
    except ValueError as exc:
        parser.error(str(exc))


if __name__ == "__main__":
    main()
