import re

from nanovl.serving.tensors import MODELS
from nanovl.serving.triton_config import DEFAULT_PARAMETERS, REPOSITORY, STAGES, ensemble_config, stage_config


def test_committed_configs_are_the_generated_ones():
    for stage in STAGES:
        assert (REPOSITORY / stage / "config.pbtxt").read_text() == stage_config(stage, DEFAULT_PARAMETERS[stage]), \
            f"{stage}/config.pbtxt is stale: run `make configs`"
    assert (REPOSITORY / "ensemble" / "config.pbtxt").read_text() == ensemble_config()


def test_no_placeholders_left():
    for path in REPOSITORY.glob("*/config.pbtxt"):
        assert not re.search(r"\$\{|\{\{", path.read_text()), path


def test_ensemble_wires_every_stage_input():
    text = ensemble_config()
    produced = set(re.findall(r'output_map \{ key: "\w+" value: "(\w+)" \}', text))
    consumed = set(re.findall(r'input_map \{ key: "\w+" value: "(\w+)" \}', text))
    public_inputs = {t.name for t in MODELS["ensemble"][0]}
    assert consumed <= produced | public_inputs
    assert {t.name for t in MODELS["ensemble"][1]} <= produced


def test_only_preprocessing_may_change_its_instance_count(tmp_path):
    import pytest

    from nanovl.serving.triton_config import write_repository

    write_repository(tmp_path / "a", instances={"preprocessing": 6})
    assert "count: 6\n" in (tmp_path / "a" / "preprocessing" / "config.pbtxt").read_text()
    with pytest.raises(ValueError, match="detokenizer"):   # more would reorder a stream's responses
        write_repository(tmp_path / "b", instances={"detokenizer": 2})
