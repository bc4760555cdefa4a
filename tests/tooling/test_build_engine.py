"""build/engine.py (`make engine`): the split Llama checkpoint, the build plan, clear errors on a wrong checkpoint."""
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from build import engine as make_engine
from tests.conftest import ROOT, chat_ids


@pytest.fixture(scope="module")
def dry_run(tiny_checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("engine")
    assert make_engine.main(["--checkpoint", str(tiny_checkpoint), "--out", str(out), "--dry-run"]) == 0
    return out


def _plan(config, tmp_path, *extra):
    args = make_engine.parse_args(["--checkpoint", str(config.path), "--out", str(tmp_path), *extra])
    return [c.argv for c in make_engine.plan(config, args)]


def _step(steps, *needles):
    """The one planned command whose argv holds every needle."""
    found = [argv for argv in steps if all(any(n in a for a in argv) for n in needles)]
    assert len(found) == 1, (needles, found)
    return found[0]


def _value(argv, flag):
    return argv[argv.index(flag) + 1]


def test_split_checkpoint_is_a_llama_with_the_same_logits(dry_run, hf_llm, tokenizer):
    from transformers import LlamaForCausalLM

    split = dry_run / "llama_hf"
    assert json.loads((split / "config.json").read_text())["architectures"] == ["LlamaForCausalLM"]
    model = LlamaForCausalLM.from_pretrained(str(split), torch_dtype=torch.float32).eval()
    ids = torch.tensor([chat_ids(tokenizer, "Describe the picture, please.")])
    with torch.no_grad():
        assert torch.equal(model(ids).logits, hf_llm(ids).logits)


def test_split_checkpoint_carries_the_tokenizer_and_generation_config(dry_run, tiny_checkpoint):
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        assert (dry_run / "llama_hf" / name).read_bytes() == (tiny_checkpoint / name).read_bytes()


def test_build_plan_sizes_the_prompt_table_and_context(config, tmp_path):
    steps = _plan(config, tmp_path, "--max-batch", "4", "--tp", "2")
    build = _step(steps, "trtllm-build")
    assert _value(build, "--max_prompt_embedding_table_size") == str(4 * 4 * 13 * 256)
    assert _value(build, "--max_seq_len") == "16384" and _value(build, "--max_input_len") == "16383"
    assert _value(build, "--kv_cache_type") == "paged" and _value(build, "--use_paged_context_fmha") == "enable"
    assert _value(build, "--max_batch_size") == "4" and _value(build, "--workers") == "2"
    convert = _step(steps, "convert_checkpoint.py")
    assert _value(convert, "--tp_size") == "2" and _value(convert, "--dtype") == "bfloat16"


def test_fp8_plan_quantizes_weights_and_kv_cache(config, tmp_path):
    steps = _plan(config, tmp_path, "--dtype", "fp8")
    quantize = _step(steps, "quantize.py")
    assert _value(quantize, "--qformat") == "fp8" and _value(quantize, "--kv_cache_dtype") == "fp8"
    assert _value(_step(steps, "trtllm-build"), "--use_fp8_context_fmha") == "enable"
    kept = _step(_plan(config, tmp_path, "--dtype", "fp8", "--kv-cache-dtype", "bfloat16"), "quantize.py")
    assert "--kv_cache_dtype" not in kept
    assert "--calib_dataset" not in quantize
    local = _step(_plan(config, tmp_path, "--dtype", "fp8", "--calib-dataset", "/data/calib"), "quantize.py")
    assert _value(local, "--calib_dataset") == "/data/calib"


def test_nvfp4_and_an_fp8_kv_cache_for_bf16_weights(config, tmp_path):
    nvfp4 = _plan(config, tmp_path, "--dtype", "nvfp4")
    assert _value(_step(nvfp4, "quantize.py"), "--qformat") == "nvfp4"
    assert _value(_step(nvfp4, "quantize.py"), "--kv_cache_dtype") == "fp8"
    kv_only = _plan(config, tmp_path, "--kv-cache-dtype", "fp8")
    quantize = _step(kv_only, "quantize.py")
    assert _value(quantize, "--qformat") == "full_prec" and _value(quantize, "--kv_cache_dtype") == "fp8"
    plain = _step(_plan(config, tmp_path), "trtllm-build")
    assert _value(plain, "--use_fp8_context_fmha") == "disable" and _value(plain, "--tokens_per_block") == "64"
    assert _value(plain, "--logits_dtype") == "float32"


@pytest.mark.parametrize("dtype", make_engine.DTYPES)
@pytest.mark.parametrize("kv", make_engine.KV_CACHE_DTYPES)
def test_every_planned_tool_command_takes_only_that_releases_flags(config, tmp_path, dtype, kv):
    from tests.fake_trtllm_tools import BUILD, CONVERT, QUANTIZE, check

    steps = _plan(config, tmp_path, "--dtype", dtype, "--kv-cache-dtype", kv, "--tp", "2")
    checked = 0
    for argv in steps:
        tool = {"convert_checkpoint.py": CONVERT, "quantize.py": QUANTIZE, "trtllm-build": BUILD}.get(
            next((a.rsplit("/", 1)[-1] for a in argv[:2] if a.endswith((".py", "trtllm-build"))), ""))
        if tool is not None:
            check(tool, argv[2:] if argv[0] != "trtllm-build" else argv[1:])
            checked += 1
    assert checked == 2   # the conversion and the engine build


def test_the_tool_stand_ins_refuse_what_their_release_does_not_take():
    from tests.fake_trtllm_tools import BUILD, QUANTIZE, check

    with pytest.raises(SystemExit, match="unrecognized argument '--paged_kv_cache_type'"):
        check(BUILD, ["--paged_kv_cache_type", "paged"])
    with pytest.raises(SystemExit, match="--qformat: invalid choice 'mxfp4'"):
        check(QUANTIZE, ["--qformat", "mxfp4"])
    assert check(BUILD, ["--gemm_plugin", "nvfp4", "--strip_plan"]) == {"gemm_plugin": "nvfp4", "strip_plan": True}


@pytest.mark.parametrize("dtype, kv, gpu, refused", [
    ("nvfp4", "auto", ("NVIDIA H200", (9, 0)), "DTYPE=nvfp4 needs a Blackwell GPU (compute capability 10.0"),
    ("fp8", "auto", ("NVIDIA A100-SXM4-80GB", (8, 0)), "FP8 needs an Ada or Hopper GPU"),
    ("bfloat16", "fp8", ("NVIDIA A100-SXM4-80GB", (8, 0)), "KV_CACHE_DTYPE=bfloat16"),
    ("nvfp4", "auto", ("NVIDIA B200", (10, 0)), None),
    ("nvfp4", "auto", ("NVIDIA GeForce RTX 5090", (12, 0)), None),
    ("fp8", "auto", ("NVIDIA H200", (9, 0)), None),
    ("bfloat16", "auto", ("Tesla V100-SXM2-32GB", (7, 0)), None),
])
def test_formats_the_gpu_cannot_run_are_refused_before_anything_runs(tiny_checkpoint, tmp_path, monkeypatch, capsys,
                                                                     dtype, kv, gpu, refused):
    examples, log = _trtllm_tools(tmp_path, monkeypatch)
    monkeypatch.setattr(make_engine, "gpu_capability", lambda: gpu)
    out = tmp_path / "out"
    code = make_engine.main(["--checkpoint", str(tiny_checkpoint), "--out", str(out), "--dtype", dtype,
                             "--kv-cache-dtype", kv, "--vision", "pytorch", "--trtllm-examples", str(examples),
                             "--calib-dataset", str(tmp_path)])
    err = capsys.readouterr().err
    if refused:
        assert code == 2 and refused in err and gpu[0] in err and not out.exists() and not log.exists()
    else:
        assert code == 0, err
        assert [line.split()[0] for line in log.read_text().splitlines()] == \
            ["convert" if (dtype, kv) == ("bfloat16", "auto") else "quantize", "build"]


def test_planned_repository_selects_the_engines(config, tmp_path):
    argv = _step(_plan(config, tmp_path), "nanovl.serving.triton_config")
    subprocess.run(argv, cwd=ROOT, check=True, timeout=60)
    text = (tmp_path / "model_repository" / "llm" / "config.pbtxt").read_text()
    assert 'key: "engine"\n  value: { string_value: "tensorrt_llm" }' in text
    assert f'string_value: "{tmp_path / "engines" / "llm"}"' in text
    assert (tmp_path / "model_repository" / "llm" / "1" / "model.py").is_file()
    preprocessing = (tmp_path / "model_repository" / "preprocessing" / "config.pbtxt").read_text()
    assert f"count: {make_engine.DEFAULT_PREPROCESSING_INSTANCES}\n" in preprocessing
    assert "count: 1\n" in (tmp_path / "model_repository" / "detokenizer" / "config.pbtxt").read_text()
    vision = (tmp_path / "model_repository" / "vision_encoder" / "config.pbtxt").read_text()
    assert 'key: "vision_engine"\n  value: { string_value: "tensorrt" }' in vision
    assert f'string_value: "{tmp_path / "engines" / "vision" / "vision.plan"}"' in vision


def test_vision_plan_exports_checks_and_builds_for_the_largest_request(config, tmp_path):
    steps = _plan(config, tmp_path, "--export-python", "/opt/export/bin/python")
    export = _step(steps, "nanovl.core.vision_export", "--export")
    build = _step(steps, "nanovl.core.vision_export", "--tensorrt")
    assert export[0] == "/opt/export/bin/python" and "--check" in export and build[0] == sys.executable
    # One request's 4 images x (12 tiles + thumbnail): a batch of requests runs in calls of that size, so TensorRT
    # reserves activations for 52 tiles, not for the stage's whole batch of 4 requests.
    assert _value(export, "--max-tiles") == _value(build, "--max-tiles") == str(4 * 13)
    assert _value(build, "--onnx") == _value(export, "--onnx") == str(tmp_path / "engines" / "vision" / "vision.onnx")
    assert steps.index(export) < steps.index(build) < steps.index(_step(steps, "nanovl.serving.triton_config"))


def test_vision_pytorch_builds_no_vision_engine(config, tmp_path):
    steps = _plan(config, tmp_path, "--vision", "pytorch")
    assert not [argv for argv in steps if "nanovl.core.vision_export" in argv]
    assert "vision_engine=pytorch" in _step(steps, "nanovl.serving.triton_config")


def test_dry_run_prints_every_command(tiny_checkpoint, tmp_path, capsys):
    assert make_engine.main(["--checkpoint", str(tiny_checkpoint), "--out", str(tmp_path), "--dry-run"]) == 0
    printed = capsys.readouterr().out
    for needle in ("convert_checkpoint.py", "trtllm-build", "nanovl.serving.triton_config", "nanovl.core.vision_export"):
        assert needle in printed
    assert not (tmp_path / "engines").exists()


@pytest.mark.parametrize("breakage, message", [
    ("no_config", "no config.json"),
    ("wrong_architecture", "lack 'Llama_Nemotron_Nano_VL'"),
    ("no_llm_weights", "no language_model.* weights"),
    ("not_a_llama", "llm_config.model_type is 'mistral', not 'llama'"),
])
def test_wrong_checkpoint_fails_clearly(tiny_checkpoint, tmp_path, breakage, message):
    broken = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, broken)
    if breakage == "no_config":
        (broken / "config.json").unlink()
    elif breakage == "wrong_architecture":
        config = json.loads((broken / "config.json").read_text())
        (broken / "config.json").write_text(json.dumps({**config, "architectures": ["LlamaForCausalLM"]}))
    elif breakage == "not_a_llama":
        config = json.loads((broken / "config.json").read_text())
        config["llm_config"]["model_type"] = "mistral"
        (broken / "config.json").write_text(json.dumps(config))
    else:
        from safetensors.torch import load_file, save_file

        weights = load_file(str(broken / "model.safetensors"))
        save_file({k: v for k, v in weights.items() if not k.startswith("language_model.")},
                  str(broken / "model.safetensors"))
    result = subprocess.run([sys.executable, "-m", "build.engine", "--checkpoint", str(broken),
                             "--out", str(tmp_path / "out"), "--dry-run"], cwd=ROOT, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 2
    assert "wrong checkpoint" in result.stderr and message in result.stderr
    assert not (tmp_path / "out").exists()


def test_vision_pytorch_is_refused_where_transformers_cannot_run_it(tiny_checkpoint, tmp_path, monkeypatch, capsys):
    # In NVIDIA's TensorRT-LLM 1.2.1 container python3 has transformers 4.57: no RadioModel.
    # transformers 5.0-5.12 have no RadioModel either.
    for old in ((4, 57), (5, 12)):
        monkeypatch.setattr(make_engine, "transformers_version", lambda: old)
        assert make_engine.main(["--checkpoint", str(tiny_checkpoint), "--out", str(tmp_path / "out"), "--dry-run",
                                 "--vision", "pytorch"]) == 2
        assert "VISION=pytorch needs transformers >= 5.13" in capsys.readouterr().err
        assert not (tmp_path / "out").exists()
    monkeypatch.setattr(make_engine, "transformers_version", lambda: (5, 13))
    assert make_engine.main(["--checkpoint", str(tiny_checkpoint), "--out", str(tmp_path / "out"), "--dry-run",
                             "--vision", "pytorch"]) == 0


def _stub(path, body):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)
    return path


def _trtllm_tools(tmp_path, monkeypatch, build_body=None):
    """Stand-ins for TensorRT-LLM 1.2.1's tools (they need a GPU), where that release has them, which take only
    their real flags (tests/fake_trtllm_tools.py) and log their arguments -> (examples dir, log).
    build_body: what the trtllm-build stand-in does instead."""
    examples, log = tmp_path / "examples", tmp_path / "steps.log"
    for tool, script in (("convert", "models/core/llama/convert_checkpoint.py"),
                         ("quantize", "quantization/quantize.py")):   # run by the steps' Python, as the real ones
        (examples / script).parent.mkdir(parents=True, exist_ok=True)
        (examples / script).write_text(f"import sys\nsys.path.insert(0, {str(ROOT)!r})\n"
                                       "from tests.fake_trtllm_tools import main\n"
                                       f"sys.exit(main([{tool!r}, {str(log)!r}, *sys.argv[1:]]))\n")
    _stub(tmp_path / "bin" / "trtllm-build",
          build_body or f'PYTHONPATH={ROOT} exec {sys.executable} -m tests.fake_trtllm_tools build {log} "$@"')
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    return examples, log


def test_a_full_run_executes_each_step_in_order(tiny_checkpoint, tmp_path, monkeypatch, capsys):
    """Not a dry run, with stand-ins for TensorRT-LLM's tools: every planned command runs, and the repository
    step writes a repository that selects the engine."""
    examples, log = _trtllm_tools(tmp_path, monkeypatch)
    out = tmp_path / "out"
    code = make_engine.main(["--checkpoint", str(tiny_checkpoint), "--out", str(out), "--vision", "pytorch",
                             "--trtllm-examples", str(examples)])
    assert code == 0, capsys.readouterr().err
    convert, build = log.read_text().splitlines()
    assert convert.startswith("convert --model_dir") and build.startswith("build --checkpoint_dir")
    assert 'string_value: "tensorrt_llm"' in (out / "model_repository" / "llm" / "config.pbtxt").read_text()


TENSORRT_SHIM = """import builtins

from tests import fake_tensorrt as _fake
from tests.fake_tensorrt import *  # noqa: F401,F403

_fake.cuda_on_cpu(builtins.setattr)
"""


def test_a_full_default_run_exports_checks_and_builds_the_vision_engine(tiny_checkpoint, tmp_path, monkeypatch,
                                                                        capfd):
    """make engine as it runs by default (VISION=tensorrt): the real ONNX export and its check against PyTorch,
    then the TensorRT build and its check, in the steps' own processes, with tests/fake_tensorrt.py as the
    steps' `tensorrt` (CUDA replaced by the CPU) and stand-ins for TensorRT-LLM's tools."""
    from tests import fake_tensorrt

    examples, log = _trtllm_tools(tmp_path, monkeypatch)
    (tmp_path / "shim").mkdir()
    (tmp_path / "shim" / "tensorrt.py").write_text(TENSORRT_SHIM)
    python = _stub(tmp_path / "bin" / "python-with-tensorrt",
                   f'PYTHONPATH={tmp_path / "shim"}:$PYTHONPATH exec {sys.executable} "$@"')
    out = tmp_path / "out"
    code = make_engine.main(["--checkpoint", str(tiny_checkpoint), "--out", str(out), "--python", str(python),
                             "--export-python", sys.executable, "--trtllm-examples", str(examples)])
    printed = capfd.readouterr()
    assert code == 0, printed.err
    assert "onnxruntime vs PyTorch: max relative error" in printed.out
    assert "TensorRT (bf16) vs PyTorch: max relative error" in printed.out
    assert (out / "engines" / "vision" / "vision.onnx").is_file()
    plan = fake_tensorrt.load_plan(out / "engines" / "vision" / "vision.plan")
    assert plan["flags"] == ["BF16"] and [s[0] for s in plan["profile"]["tiles"]] == [1, 13, 52]
    vision = (out / "model_repository" / "vision_encoder" / "config.pbtxt").read_text()
    assert 'string_value: "tensorrt"' in vision and str(out / "engines" / "vision" / "vision.plan") in vision
    assert [line.split()[0] for line in log.read_text().splitlines()] == ["convert", "build"]


def test_a_failing_step_stops_the_build_and_says_which(tiny_checkpoint, tmp_path, monkeypatch, capsys):
    examples, _ = _trtllm_tools(tmp_path, monkeypatch, build_body="echo 'engine build broke' >&2; exit 3")
    out = tmp_path / "out"
    code = make_engine.main(["--checkpoint", str(tiny_checkpoint), "--out", str(out), "--vision", "pytorch",
                             "--trtllm-examples", str(examples)])
    assert code == 3 and "step 3 failed with exit code 3" in capsys.readouterr().err
    assert not (out / "model_repository").exists()


def test_max_num_tokens_must_be_a_multiple_of_the_kv_block(config, tmp_path, capsys):
    with pytest.raises(SystemExit):
        make_engine.parse_args(["--checkpoint", str(config.path), "--out", str(tmp_path), "--max-num-tokens", "1000"])
    assert "multiple of 64" in capsys.readouterr().err


def test_a_calibration_set_must_be_a_directory_quantize_py_reads_as_local(tiny_checkpoint, tmp_path, capsys):
    # quantize.py loads a local set only from a directory, and takes any name holding cnn_dailymail for
    # the Hub's: both would fail (or go online) after the conversion has started.
    with pytest.raises(SystemExit):
        make_engine.parse_args(["--checkpoint", str(tiny_checkpoint), "--out", str(tmp_path), "--dtype", "fp8",
                                "--calib-dataset", str(tmp_path / "cnn_dailymail")])
    assert "holding 'cnn_dailymail'" in capsys.readouterr().err
    (tmp_path / "calib.jsonl").write_text('{"text": "x"}\n')
    assert make_engine.main(["--checkpoint", str(tiny_checkpoint), "--out", str(tmp_path / "out"), "--dtype", "fp8",
                             "--calib-dataset", str(tmp_path / "calib.jsonl")]) == 2
    assert "is not a directory" in capsys.readouterr().err and not (tmp_path / "out").exists()
