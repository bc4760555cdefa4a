"""The GPU image runs our code under Python 3.10 (NVIDIA's 24.10 container is Ubuntu 22.04): its python3 serves
the stages and the frontend with TensorRT-LLM engines and runs `make engine`, and the PyTorch venv is made from
it. `make test-container` runs the tests of what it serves under that Python and TensorRT-LLM 0.14's pins; this
reads every file, run there or not, for syntax and standard-library names newer than 3.10."""
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT

CHECKED = ("nanovl", "frontend", "model_repository", "build", "bench", "examples")


def _vermin(*paths) -> subprocess.CompletedProcess:
    return subprocess.run([str(Path(sys.executable).parent / "vermin"), "--no-tips", "--violations", "--target=3.10-",
                           "--eval-annotations", "--backport", "typing", *map(str, paths)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_every_file_the_image_may_run_needs_at_most_python_3_10():
    result = _vermin(*CHECKED)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_check_catches_what_3_10_lacks(tmp_path):
    (tmp_path / "newer.py").write_text("import tomllib\nfrom datetime import UTC\n")
    result = _vermin(tmp_path)
    assert result.returncode != 0 and "tomllib" in result.stdout and "datetime.UTC" in result.stdout
