"""Size limits that keep the code readable (STYLE.md): no Python file over 400 lines, and every Triton model.py an
adapter of at most 150 lines, with nothing in it a unit test would want to reach."""
from pathlib import Path

from tests.conftest import ROOT

MAX_LINES = 400
MAX_ADAPTER_LINES = 150
# Where the code lives; every .py file of the repository counts, these must at least be among them.
CODE_FOLDERS = ("nanovl", "frontend", "model_repository", "build", "bench", "tests", "examples")


def _python_files() -> list[Path]:
    """Every .py file of the repository but those of virtualenvs, caches and git (folders named with a dot)."""
    return sorted(path for path in ROOT.rglob("*.py")
                  if not any(part.startswith(".") or part == "__pycache__" for part in path.relative_to(ROOT).parts))


def _lines(path: Path) -> int:
    return len(path.read_text(encoding="utf-8").splitlines())


def test_every_code_folder_is_counted():
    files = _python_files()
    for folder in CODE_FOLDERS:
        assert any(path.relative_to(ROOT).parts[0] == folder for path in files), folder


def test_no_python_file_over_400_lines():
    too_long = {str(path.relative_to(ROOT)): _lines(path) for path in _python_files() if _lines(path) > MAX_LINES}
    assert too_long == {}


def test_every_model_py_is_a_small_adapter():
    adapters = sorted(ROOT.glob("model_repository/*/1/model.py"))
    assert len(adapters) >= 4   # preprocessing, vision_encoder, llm, detokenizer
    too_long = {str(path.relative_to(ROOT)): _lines(path) for path in adapters if _lines(path) > MAX_ADAPTER_LINES}
    assert too_long == {}
