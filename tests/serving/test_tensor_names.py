"""Tensor names live in nanovl.serving.tensors alone: the code that speaks Triton takes them from there.

A name spelled again as a string is how the three-copies habit of TensorRT-LLM's backend starts; here it is a
failing test. Excluded on purpose: docstrings; `param=` of an error (an OpenAI field name that a tensor name
may equal); the value of a bytes tensor (a finish reason "stop" is not the tensor "stop"); the serving modules
that never touch a tensor (the generation service, the parameter reader); and examples/, which shows a user
the raw wire names.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

from nanovl.serving import tensors

ROOT = Path(__file__).resolve().parents[2]
# The code that reads or writes Triton tensors: the adapters, the serving layer and the frontend's backend.
TENSOR_FREE = {"tensors.py", "service.py", "parameters.py", "__init__.py"}
TRITON_SPEAKERS = sorted([*ROOT.glob("model_repository/*/1/model.py"), *ROOT.glob("frontend/triton*.py"),
                          *(p for p in ROOT.glob("nanovl/serving/*.py") if p.name not in TENSOR_FREE)])
NAMES = {t.name for inputs, outputs in tensors.MODELS.values() for t in (*inputs, *outputs)}


def string_literals(tree: ast.AST):
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                  and node.body and isinstance(node.body[0], ast.Expr)
                  and isinstance(node.body[0].value, ast.Constant)}
    params = {id(kw.value) for node in ast.walk(tree) if isinstance(node, ast.Call)
              for kw in node.keywords if kw.arg == "param"}
    params |= {id(arg) for node in ast.walk(tree) if isinstance(node, ast.Call)
               and getattr(node.func, "id", getattr(node.func, "attr", "")) == "bytes_tensor" for arg in node.args}
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings | params:
            yield node


@pytest.mark.parametrize("path", TRITON_SPEAKERS,
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_no_tensor_name_is_spelled_outside_tensors(path):
    spelled = [f"line {node.lineno}: {node.value!r}" for node in string_literals(ast.parse(path.read_text()))
               if node.value in NAMES]
    assert not spelled, f"{path.relative_to(ROOT)} spells tensor names; use nanovl.serving.tensors: {spelled}"


def test_the_check_sees_a_spelled_name():
    tree = ast.parse('def f(request):\n    """input_ids"""\n'
                     '    return get(request, "input_ids"), E(param="stop"), bytes_tensor("stop")\n')
    assert [node.value for node in string_literals(tree) if node.value in NAMES] == ["input_ids"]


def test_the_check_covers_every_adapter_and_the_frontend_backend():
    names = {str(p.relative_to(ROOT)) for p in TRITON_SPEAKERS}
    assert {f"model_repository/{m}/1/model.py" for m in ("preprocessing", "vision_encoder", "llm", "detokenizer")} <= names
    assert any(name.startswith("frontend/triton") for name in names)
