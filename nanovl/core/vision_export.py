"""The vision encoder as a graph for other runtimes: ONNX with a dynamic tile batch, checked against PyTorch with
onnxruntime, and a TensorRT engine built from it (GPU only).

    python -m nanovl.core.vision_export --checkpoint DIR --onnx FILE.onnx [--export] [--check] [--tensorrt FILE.plan]
                                   [--max-tiles 52 (max_call_tiles)] [--opt-tiles 13]

The three steps can run in different environments: exporting needs transformers >= 5.13 (RadioModel), building
needs TensorRT, and NVIDIA's TensorRT-LLM container pins an older transformers (Dockerfile).

The graph is the whole stage: tiles in (float32 [n, S, S, 3] RGB, 0..255; [0, 1] scaling and CLIP
normalization inside), RADIO, pixel shuffle and mlp1, float32 [n, tokens_per_tile, llm_hidden] out, so a
runtime swaps in behind the same call.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

import numpy as np

from .checkpoint import CheckpointConfig, load_config
from .errors import ServerError
from .vision_runtimes import EMBEDDINGS, TILES, OnnxVision, TensorRTVision, TorchVision, VisionSettings, trt_logger

log = logging.getLogger(__name__)
# TensorRT 10's ONNX parser reads opsets up to 20; onnxruntime reads all of these.
OPSET = 18
# Relative error (max |a - b| / max |b|) above which an exported graph is refused. Measured on the tiny
# checkpoint: 2e-6 absolute on values of ~1.
MAX_RELATIVE_ERROR = 1e-3
# The same for the bf16 TensorRT engine against the PyTorch float32 embeddings the check saved: bf16 keeps 8
# bits of mantissa through 32 layers. A first guess, to be confirmed on a GPU.
MAX_TENSORRT_RELATIVE_ERROR = 5e-2


def max_call_tiles() -> int:
    """The most tiles one vision call takes: one request's most images of the most tiles (thumbnail included).
    A batch of several requests runs in calls of this size (TensorRTVision), and TensorRT reserves activation
    memory for its largest call when it loads, beside the LLM's KV cache."""
    from .preprocess import PreprocessSettings

    limits = PreprocessSettings()
    return limits.max_images * (limits.max_tiles + 1)


def relative_error(ours: np.ndarray, reference: np.ndarray) -> float:
    return float(np.abs(ours - reference).max() / max(float(np.abs(reference).max()), 1e-12))


def reference_file(onnx_path: Path) -> Path:
    """Where the check leaves tiles and PyTorch's embeddings of them, for the TensorRT build to compare with."""
    return onnx_path.with_suffix(".reference.npz")


def export_onnx(config: CheckpointConfig, path: Path, *, max_tiles: int) -> Path:
    """The float32 graph with a dynamic tile count in [1, max_tiles]; weights over 2 GB go to `path`.data."""
    import torch

    from .vision import load_vision

    if max_tiles < 2:   # torch.export specializes a dimension that can only be 1
        raise ValueError(f"max_tiles must be at least 2, got {max_tiles}")
    encoder = load_vision(config, dtype="float32")
    side = config.image_size
    # Float pixels in 0..255, not uint8: TensorRT takes a uint8 network input only straight into a Cast, and
    # the exporter also reads the tile count off the input. The runtimes cast on the device, after the copy.
    sample = torch.zeros(2, side, side, 3, dtype=torch.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    names = dict(input_names=[TILES], output_names=[EMBEDDINGS], opset_version=OPSET)
    try:
        tiles = torch.export.Dim("tiles", min=1, max=max_tiles)
        torch.onnx.export(encoder, (sample,), str(path), dynamic_shapes=({0: tiles},), dynamo=True, verbose=False,
                          **names)
    except Exception as exc:
        # The torch.export-based exporter needs a torch and onnxscript that agree; NVIDIA's containers ship
        # older torch builds. The TorchScript exporter gives the same graph here (checked by --check either way).
        log.warning("torch.export-based ONNX export failed (%s); using the TorchScript exporter", exc)
        torch.onnx.export(encoder, (sample,), str(path), dynamic_axes={TILES: {0: "tiles"}, EMBEDDINGS: {0: "tiles"}},
                          dynamo=False, **names)
    return path


def check_onnx(config: CheckpointConfig, path: Path, tile_counts: tuple[int, ...] = (1, 3)) -> float:
    """The graph's worst relative error against the PyTorch encoder, run by onnxruntime on random tiles. The
    last tiles and PyTorch's embeddings of them are saved beside the graph (reference_file)."""
    # The stage's own runtimes, on every core (a one-off check, not a stage sharing the machine).
    threads = os.cpu_count() or 1
    session = OnnxVision(VisionSettings("onnxruntime", str(path), torch_threads=threads))
    encoder = TorchVision(config, VisionSettings(dtype="float32", torch_threads=threads))
    rng = np.random.default_rng(0)
    worst = 0.0
    for n in tile_counts:
        tiles = rng.integers(0, 256, (n, config.image_size, config.image_size, 3), dtype=np.uint8)
        ours, reference = session(tiles), encoder(tiles)
        if ours.shape != reference.shape:
            raise ServerError(f"{path}: {n} tiles gave shape {ours.shape}, PyTorch {reference.shape}")
        worst = max(worst, relative_error(ours, reference))
    np.savez(reference_file(path), tiles=tiles, embeddings=reference)
    return worst


def check_tensorrt(plan_path: Path, onnx_path: Path) -> float | None:
    """The engine's relative error on the tiles the ONNX check saved, or None when there are none."""
    if not reference_file(onnx_path).is_file():
        return None
    saved = np.load(reference_file(onnx_path))
    engine = TensorRTVision(VisionSettings(vision_engine="tensorrt", vision_engine_path=str(plan_path),
                                           device="cuda"))
    return relative_error(engine(saved["tiles"]), saved["embeddings"])


def build_tensorrt(config: CheckpointConfig, onnx_path: Path, plan_path: Path, *, max_tiles: int,
                   opt_tiles: int) -> Path:
    """A TensorRT engine from the ONNX graph: bf16 kernels allowed, one profile of 1..max_tiles tiles tuned for
    opt_tiles (one 13-tile image). Needs a GPU and the `tensorrt` package (NVIDIA's container has both)."""
    import tensorrt as trt

    logger = trt_logger(trt)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ServerError(f"TensorRT could not parse {onnx_path}: {errors}")
    build_config = builder.create_builder_config()
    # A weakly typed network with bf16 kernels allowed: what TensorRT 10.x (the 24.10 container's 10.4) builds.
    # Later TensorRT deprecates these precision flags for strongly typed networks, where the graph's own types
    # decide: a bf16 export would then be needed.
    build_config.set_flag(trt.BuilderFlag.BF16)
    profile = builder.create_optimization_profile()
    side = config.image_size
    profile.set_shape(TILES, (1, side, side, 3), (min(opt_tiles, max_tiles), side, side, 3), (max_tiles, side, side, 3))
    build_config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, build_config)
    if serialized is None:
        raise ServerError(f"TensorRT could not build an engine from {onnx_path} (see its log above)")
    plan_path.parent.mkdir(parents=True, exist_ok=True)
    plan_path.write_bytes(bytes(serialized))
    return plan_path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--onnx", type=Path, required=True, help="the ONNX file (written with --export)")
    parser.add_argument("--export", action="store_true", help="export the graph (needs transformers >= 5.13)")
    parser.add_argument("--check", action="store_true", help="compare it with PyTorch through onnxruntime")
    parser.add_argument("--tensorrt", type=Path, help="build a TensorRT engine from it here (GPU, tensorrt)")
    parser.add_argument("--max-tiles", type=int, default=max_call_tiles(), help="most tiles one call takes")
    parser.add_argument("--opt-tiles", type=int, default=13, help="the tile count TensorRT tunes for")
    args = parser.parse_args(argv)
    config = load_config(args.checkpoint)
    if args.export:
        export_onnx(config, args.onnx, max_tiles=args.max_tiles)
        print(f"vision encoder ONNX graph: {args.onnx} (1..{args.max_tiles} tiles)")
    if args.check:
        error = check_onnx(config, args.onnx)
        print(f"onnxruntime vs PyTorch: max relative error {error:.2e}")
        if error > MAX_RELATIVE_ERROR:
            print(f"vision export: the graph differs from PyTorch by {error:.2e} (> {MAX_RELATIVE_ERROR})",
                  file=sys.stderr)
            return 1
    if args.tensorrt:
        build_tensorrt(config, args.onnx, args.tensorrt, max_tiles=args.max_tiles, opt_tiles=args.opt_tiles)
        print(f"vision TensorRT engine: {args.tensorrt}")
        error = check_tensorrt(args.tensorrt, args.onnx)
        if error is None:
            print(f"no {reference_file(args.onnx)} (written by --check): the engine is not compared with PyTorch")
        elif error > MAX_TENSORRT_RELATIVE_ERROR:
            print(f"vision TensorRT engine: differs from PyTorch by {error:.2e} (> {MAX_TENSORRT_RELATIVE_ERROR})",
                  file=sys.stderr)
            return 1
        else:
            print(f"TensorRT (bf16) vs PyTorch: max relative error {error:.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
