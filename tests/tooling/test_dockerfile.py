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
