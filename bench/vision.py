"""make bench-vision: tiles/s of the vision_encoder stage's runtimes side by side, same checkpoint, same tiles.

    python -m bench.vision [--checkpoint DIR | --real-size] [--device cpu] [--threads 1] [--tiles 1 13 52]
                           [--plan FILE.plan]

PyTorch (nanovl.core.vision) against onnxruntime on the graph `make engine` exports (exported here first), and
against a TensorRT engine when --plan names one (GPU). Outputs are checked equal before anything is timed.
--real-size runs C-RADIOv2-H + mlp1 at the real model's geometry with random weights (from
bench.random_checkpoint).
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from bench.random_checkpoint import REAL, write_config, write_weights
from nanovl.core.checkpoint import load_config
from nanovl.core.vision_runtimes import VisionSettings, load_vision_engine
from nanovl.core.vision_export import export_onnx, relative_error

ROOT = Path(__file__).resolve().parent.parent


def tiles_per_second(engine, tiles: np.ndarray, seconds: float = 2.0) -> float:
    engine(tiles)   # warm-up
    runs, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        engine(tiles)
        runs += 1
    return runs * len(tiles) / (time.perf_counter() - started)


def real_size_vision(workdir: Path):
    """A checkpoint of the real geometry with random weights for the vision part only (~1.3 GB)."""
    path = workdir / "real-vision"
    if (path / "model.safetensors.index.json").is_file():
        return load_config(path)
    config = write_config(path, REAL)
    write_weights(config, torch.device("cpu"), llm_weights=False)
    return config


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=ROOT / "checkpoints" / "tiny")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=VisionSettings.torch_threads, help="CPU threads of each")
    parser.add_argument("--tiles", type=int, nargs="+", default=[1, 13, 52])
    parser.add_argument("--seconds", type=float, default=2.0, help="timed per runtime and tile count")
    parser.add_argument("--dtype", default=None, help="PyTorch's dtype (default: float32 on CPU, as the ONNX "
                        "graph; bfloat16 on CUDA, as the TensorRT engine)")
    parser.add_argument("--plan", help="a TensorRT vision engine to time as well")
    parser.add_argument("--real-size", action="store_true", help="random weights at the real geometry")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/nanovl-bench-vision"),
                        help="where --real-size writes its checkpoint (reused when present)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    config = real_size_vision(args.workdir) if args.real_size else load_config(args.checkpoint)
    with tempfile.TemporaryDirectory() as tmp:
        graph = export_onnx(config, Path(tmp) / "vision.onnx", max_tiles=max(args.tiles + [2]))
        common = dict(device=args.device, torch_threads=args.threads)
        dtype = args.dtype or ("float32" if args.device == "cpu" else "bfloat16")
        engines = {"pytorch": VisionSettings(dtype=dtype, **common),
                   "onnxruntime": VisionSettings("onnxruntime", str(graph), **common)}
        if args.plan:
            engines["tensorrt"] = VisionSettings("tensorrt", args.plan, **common)
        loaded = {name: load_vision_engine(config, settings) for name, settings in engines.items()}
        print(f"checkpoint {config.path}, device {args.device}, {args.threads} thread(s), pytorch in {dtype}, "
              f"torch {torch.__version__}")
        print(f"{'tiles':>6} " + " ".join(f"{name + ' tiles/s':>20}" for name in loaded) + "   vs pytorch")
        rng = np.random.default_rng(0)
        for n in args.tiles:
            tiles = rng.integers(0, 256, (n, config.image_size, config.image_size, 3), dtype=np.uint8)
            reference = loaded["pytorch"](tiles)
            for name, engine in loaded.items():
                error = relative_error(engine(tiles), reference)
                if error > 5e-2:
                    raise SystemExit(f"{name} differs from pytorch by {error:.2e} at {n} tiles: not timed")
            rates = {name: tiles_per_second(engine, tiles, args.seconds) for name, engine in loaded.items()}
            ratios = ", ".join(f"{name} {rate / rates['pytorch']:.2f}x" for name, rate in rates.items()
                               if name != "pytorch")
            print(f"{n:>6} " + " ".join(f"{rate:>20.3g}" for rate in rates.values()) + f"   {ratios}")


if __name__ == "__main__":
    main()
