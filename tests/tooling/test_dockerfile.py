"""The GPU image cannot be built on these machines (no Docker engine), so its Dockerfile is read instead: what it
copies exists, and everything the image runs (its entrypoint, the make targets meant for it, the requirement
files its RUN steps install) is copied in before it is used."""
import re
from pathlib import PurePosixPath

import pytest
from dockerfile_parse import DockerfileParser

from tests.conftest import ROOT

# The targets the README runs inside the image.
IMAGE_TARGETS = ("engine", "bench-gpu")


def _instructions():
    return DockerfileParser(str(ROOT / "Dockerfile")).structure


def _copied() -> list[tuple[int, str, PurePosixPath]]:
    """(line, source in the repository, path in the image) for every file or folder COPY takes."""
    workdir, copied = PurePosixPath("/"), []
    for instruction in _instructions():
        if instruction["instruction"] == "WORKDIR":
            workdir = workdir / instruction["value"]
        elif instruction["instruction"] == "COPY":
            *sources, destination = instruction["value"].split()
            target = workdir / destination
            for source in sources:
                path = target / PurePosixPath(source).name if destination.endswith("/") or len(sources) > 1 \
                    else target
                copied.append((instruction["startline"], source, path))
    return copied


def _in_image(path: str, before_line: int | None = None) -> bool:
    """Whether the repository's `path` is in the image (by then)."""
    return any((path == source or path.startswith(source.rstrip("/") + "/"))
               for line, source, _ in _copied() if before_line is None or line < before_line)


def test_everything_copied_exists():
    for _, source, _ in _copied():
        assert (ROOT / source).exists(), source


def test_the_entrypoint_is_copied_where_it_is_run():
    (entrypoint,) = [i for i in _instructions() if i["instruction"] == "ENTRYPOINT"]
    script = re.findall(r'"(/opt/nanovl/[^"]+)"', entrypoint["value"])
    assert script and any(str(target) == script[0] for _, _, target in _copied())


@pytest.mark.parametrize("target", IMAGE_TARGETS)
def test_the_scripts_of_the_images_make_targets_are_copied(target):
    makefile = (ROOT / "Makefile").read_text()
    recipe = re.search(rf"^{re.escape(target)}:.*\n((?:\t.*\n)+)", makefile, re.MULTILINE).group(1)
    # Our scripts run as modules (`python -m build.engine`), from the repository root as from /opt/nanovl.
    scripts = [module.replace(".", "/") + ".py" for module in re.findall(r"\s-m\s+([\w.]+)", recipe)]
    assert scripts and _in_image("Makefile")
    for script in scripts:
        assert (ROOT / script).is_file(), f"make {target} runs {script}, which the repository does not have"
        assert _in_image(script), f"make {target} runs {script}, which the image does not have"


def test_requirement_files_are_copied_before_they_are_installed():
    for instruction in _instructions():
        if instruction["instruction"] == "RUN":
            for path in re.findall(r"-r\s+(\S+)", instruction["value"]):
                assert _in_image(path, before_line=instruction["startline"]), path


def test_what_the_image_installs_has_pyprojects_bounds():
    """deploy/serve-requirements.txt is pyproject's runtime and serve dependencies without those TensorRT-LLM
    brings (transformers, tokenizers) or the CPU torch: same packages, same bounds."""
    import tomllib

    from packaging.requirements import Requirement

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = {r.name: r for r in map(Requirement, project["dependencies"] + project["optional-dependencies"]["serve"])
              if r.name not in ("transformers", "tokenizers")}
    lines = (ROOT / "deploy" / "serve-requirements.txt").read_text().splitlines()
    installed = {r.name: r for r in (Requirement(line) for line in lines if line and not line.startswith("#"))}
    assert set(installed) == set(wanted)
    for name, requirement in installed.items():
        assert (requirement.specifier, requirement.extras) == (wanted[name].specifier, wanted[name].extras), name


def _arg(name: str) -> str:
    (value,) = [i["value"].split("=", 1)[1] for i in _instructions()
                if i["instruction"] == "ARG" and i["value"].startswith(f"{name}=")]
    return value


def test_the_image_is_the_tensorrt_llm_release_the_stand_ins_follow():
    """The bindings and tools stand-ins take one release's names; the image must carry that release, and says so
    at build time rather than at the first request."""
    from tests import fake_trtllm, fake_trtllm_tools

    version = _arg("TRTLLM_VERSION")
    assert version == "1.2.1"
    assert f"TensorRT-LLM {version}" in fake_trtllm.__doc__ and f"TensorRT-LLM {version}" in fake_trtllm_tools.__doc__
    (base,) = [i["value"] for i in _instructions() if i["instruction"] == "FROM"]
    assert base == "nvcr.io/nvidia/tritonserver:${TRITON_VERSION}-trtllm-python-py3"
    assert re.fullmatch(r"26\.\d\d", _arg("TRITON_VERSION"))
    runs = [i["value"] for i in _instructions() if i["instruction"] == "RUN"]
    assert any("version('tensorrt_llm')" in run and "${TRTLLM_VERSION}" in run for run in runs)
    assert any("--branch v${TRTLLM_VERSION}" in run and "examples/models/core/llama" in run for run in runs)
