"""The layers in pyproject's [tool.importlinter] (frontend > nanovl.serving > nanovl.engine > nanovl.core, and no
serving stack below serving) hold, checked by the same `lint-imports` the README names; and the contracts are not
vacuous: a copy of the code with one wrong import added breaks them."""
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tests.conftest import ROOT

LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def _lint(cwd: Path) -> subprocess.CompletedProcess:
    # No cache: it would be a folder in the repository, and a stale one could hide a new import.
    return subprocess.run([str(LINT_IMPORTS), "--no-cache", "--no-logo"], cwd=cwd, capture_output=True, text=True,
                          timeout=120)


def _contracts() -> dict[str, dict]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    return {contract["type"]: contract for contract in config["contracts"]}


def test_the_contracts_state_the_layers():
    contracts = _contracts()
    assert contracts["layers"]["layers"] == ["frontend", "nanovl.serving", "nanovl.engine", "nanovl.core"]
    assert set(contracts["forbidden"]["source_modules"]) == {"nanovl.core", "nanovl.engine"}
    assert set(contracts["forbidden"]["forbidden_modules"]) >= {
        "tritonclient", "grpc", "fastapi", "starlette", "uvicorn", "triton_python_backend_utils"}


def test_the_code_keeps_every_contract():
    result = _lint(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    for contract in _contracts().values():
        assert f"{contract['name']} KEPT" in result.stdout


# (module, line added at its end, the contract it breaks); imports inside a function count as much as those on top.
VIOLATIONS = [
    ("nanovl/core/tiling.py", "from nanovl.serving import tensors", "layers"),
    ("nanovl/engine/scheduler.py", "from frontend import schemas", "layers"),
    ("nanovl/engine/blocks.py", "import tritonclient.grpc", "forbidden"),
    ("nanovl/core/images.py", "def _stub():\n    import triton_python_backend_utils", "forbidden"),
    ("nanovl/core/fetch.py", "from starlette.requests import Request", "forbidden"),
]


@pytest.mark.parametrize("module, line, kind", VIOLATIONS, ids=[v[0] + ":" + v[2] for v in VIOLATIONS])
def test_a_wrong_import_breaks_its_contract(tmp_path, module, line, kind):
    for package in ("nanovl", "frontend"):
        shutil.copytree(ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy2(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    with (tmp_path / module).open("a") as handle:
        handle.write(f"\n\n{line}\n")
    result = _lint(tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    broken, kept = _contracts()[kind]["name"], [c["name"] for k, c in _contracts().items() if k != kind]
    assert f"{broken} BROKEN" in result.stdout
    assert all(f"{name} KEPT" in result.stdout for name in kept)
    assert module[:-len(".py")].replace("/", ".") in result.stdout   # the report names the offending module
