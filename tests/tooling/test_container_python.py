"""The GPU image runs our code under Python 3.12 (NVIDIA's 26.04 container is Ubuntu 24.04): its python3 serves
the stages and the frontend with TensorRT-LLM engines and runs `make engine`, and the PyTorch venv is made from
it. `make test-container` runs the tests of what it serves under that Python and TensorRT-LLM 1.2.1's pins, and
compiles every file there. The package still declares Python >= 3.10 (pyproject's requires-python, for CPU
installs), so this reads every file for syntax and standard-library names newer than 3.10."""
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

CHECKED = ("nanovl", "frontend", "model_repository", "build", "bench", "examples")


def _vermin(*paths) -> subprocess.CompletedProcess:
    return subprocess.run([str(Path(sys.executable).parent / "vermin"), "--no-tips", "--violations", "--target=3.10-",
                           "--eval-annotations", "--backport", "typing", *map(str, paths)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)


def _passes(result: subprocess.CompletedProcess) -> bool:
    # vermin exits 0 on a file it cannot parse (syntax newer than the Python it runs under): it says "error:".
    return result.returncode == 0 and "error:" not in result.stdout + result.stderr


def test_every_file_the_image_may_run_needs_at_most_python_3_10():
    result = _vermin(*CHECKED)
    assert _passes(result), result.stdout + result.stderr


@pytest.mark.parametrize("source, named", [
    ("import tomllib\nfrom datetime import UTC\n", ["tomllib", "datetime.UTC"]),   # 3.11 library names
    ("class Box[T]:\n    pass\n", ["newer.py"]),                                   # 3.12 syntax
])
def test_the_check_catches_what_3_10_lacks(tmp_path, source, named):
    (tmp_path / "newer.py").write_text(source)
    result = _vermin(tmp_path)
    assert not _passes(result) and all(name in result.stdout + result.stderr for name in named)
