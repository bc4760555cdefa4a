from pathlib import Path

from nanovl.serving.tensors import MODELS

DOC = Path(__file__).resolve().parents[2] / "docs" / "triton-api.md"


def test_the_api_page_names_every_tensor():
    text = DOC.read_text()
    missing = {t.name for inputs, outputs in MODELS.values() for t in inputs + outputs if f"`{t.name}`" not in text}
    assert not missing, f"docs/triton-api.md does not document {sorted(missing)}"
