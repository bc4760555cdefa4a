"""bench.gpu (`make bench-gpu`) and bench.random_checkpoint: the real geometry is the real model's, and the whole
run works at toy size on CPU, so that a session with a GPU spends its device time measuring, not debugging."""
import json

import pytest
import torch

from bench import gpu as bench
from bench.random_checkpoint import REAL, SMALL, write_config


def test_real_geometry_is_the_8b_model_and_vit_h(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = write_config(tmp_path, REAL)
    assert (config.vision.hidden_size, config.vision.num_layers, config.vision.num_heads, config.vision.mlp_dim) \
        == (1280, 32, 16, 5120)
    assert config.vision.num_cls_tokens + config.vision.num_registers == 8 and config.tokens_per_tile == 256
    llm = {k: v for k, v in config.llm_config.items() if k not in ("architectures", "model_type", "torch_dtype")}
    with torch.device("meta"):
        params = sum(p.numel() for p in LlamaForCausalLM(LlamaConfig(**llm)).parameters())
    assert 8.0e9 < params < 8.1e9   # Llama-3.1-8B: 8.03B
    # ViT-H/16 at 1032 tokens is ~1.47 TFLOP a tile (32 layers x 46 GFLOP); mlp1 adds ~19 GFLOP.
    assert 1.45e12 < bench.vision_flops_per_tile(config) < 1.52e12


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench-gpu")
    code = bench.main(["--geometry", "small", "--device", "cpu", "--workdir", str(out), "--json", str(out / "r.json")])
    return code, json.loads((out / "r.json").read_text()), out


def test_every_part_runs_and_reports(small_run):
    code, results, _ = small_run
    assert code == 0 and results["errors"] == {}
    assert results["peak"]["matmul_tflops"] > 0 and results["peak"]["copy_gbps"] > 0
    assert [row["tiles"] for row in results["vision"]] == list(SMALL.tile_batches)
    assert all(row["tiles_per_s"] > 0 and row["of_peak"] > 0 for row in results["vision"])
    assert results["llm"]["prefill"]["tokens_per_s"] > 0 and results["llm"]["image_prefill"]["tokens_per_s"] > 0
    assert results["llm"]["image_prefill"]["prompt_tokens"] == 13 * 256 + 24
    assert results["llm"]["decode_sampled"]["tokens_per_s"] > 0
    decode = results["llm"]["decode"]
    assert [row["concurrency"] for row in decode] == list(SMALL.concurrency)
    assert all(row["tokens_per_s"] > 0 and row["transformers_tokens_per_s"] > 0 and row["of_limit"] > 0
               for row in decode)


def test_the_random_checkpoint_loads_through_the_stage_loaders(small_run):
    from nanovl.core.checkpoint import load_config, load_llm
    from nanovl.core.vision import load_vision

    config = load_config(small_run[2] / "small")
    assert load_llm(config).config.num_hidden_layers == SMALL.llm["num_hidden_layers"]
    tiles = torch.zeros(1, 512, 512, 3, dtype=torch.uint8)
    assert load_vision(config)(tiles).shape == (1, 256, SMALL.llm["hidden_size"])


def test_a_failing_part_does_not_hide_the_others(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(bench, "bench_vision", lambda *a: 1 / 0)
    code = bench.main(["--geometry", "small", "--device", "cpu", "--workdir", str(tmp_path), "--parts", "peak",
                       "vision", "prefill", "--json", str(tmp_path / "r.json")])
    results = json.loads((tmp_path / "r.json").read_text())
    assert code == 1 and "ZeroDivisionError" in results["errors"]["vision"]
    assert results["llm"]["prefill"]["tokens_per_s"] > 0 and "decode" not in results["llm"]
    out = capsys.readouterr().out.splitlines()
    # Every line once, the figures measured after the failure too (a later emit() once reprinted the failure).
    assert sum(line.startswith("vision: FAILED") for line in out) == 1
    assert sum(line.startswith("prefill:") for line in out) == 1
    assert sum(line.startswith("image prefill:") for line in out) == 1
    assert len(out) == len(set(out)) == len(bench.report(results).splitlines())


def test_a_failure_inside_the_llm_part_keeps_its_earlier_figures(tmp_path, monkeypatch):
    def broken(*args):
        raise RuntimeError("decode broke")

    monkeypatch.setattr(bench, "_decode", broken)
    code = bench.main(["--geometry", "small", "--device", "cpu", "--workdir", str(tmp_path), "--parts", "prefill",
                       "decode", "--json", str(tmp_path / "r.json")])
    results = json.loads((tmp_path / "r.json").read_text())
    assert code == 1 and "decode broke" in results["errors"]["llm"]
    assert results["llm"]["prefill"]["tokens_per_s"] > 0 and results["llm"]["decode"] == []
