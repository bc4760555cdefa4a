"""Stage parameters (config.pbtxt `parameters`, all strings) -> a frozen settings dataclass, without Triton.

One reader for every stage: each field of the settings class is read from the parameter of its name and
converted by the field's type; an absent or empty parameter keeps the field's default, so a deployment that
blanks a value gets the documented default instead of a crash.
"""
from __future__ import annotations

import dataclasses
import json
import os
import types
import typing
from typing import Mapping, TypeVar

from ..core.errors import ServerError

CHECKPOINT_ENV = "NANOVL_CHECKPOINT"
T = TypeVar("T")
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def parse_flag(value: str, name: str = "value") -> bool:
    """1/true/yes/on and 0/false/no/off, any case; anything else is a configuration error, not a silent no."""
    word = value.strip().lower()
    if word in _TRUE or word in _FALSE:
        return word in _TRUE
    raise ServerError(f"parameter {name}: {value!r} is not a boolean (true/false)")


def _convert(name: str, kind, value: str):
    if typing.get_origin(kind) in (typing.Union, types.UnionType):   # `str | None` and the like
        kind = next(k for k in typing.get_args(kind) if k is not type(None))
    try:
        if kind is bool:
            return parse_flag(value, name)
        if typing.get_origin(kind) is tuple:   # comma-separated
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return kind(value.strip()) if kind in (int, float) else kind(value)
    except ValueError:
        raise ServerError(f"parameter {name}: {value!r} is not a valid {getattr(kind, '__name__', kind)}") from None


def read_settings(cls: type[T], params: Mapping[str, str]) -> T:
    """A `cls` (a dataclass of str, int, float, bool, optional and tuple-of-str fields) from stage parameters."""
    hints = typing.get_type_hints(cls)
    values = {}
    for field in dataclasses.fields(cls):
        raw = params.get(field.name, "")
        if raw.strip():
            values[field.name] = _convert(field.name, hints[field.name], raw)
    return cls(**values)


def as_parameters(settings) -> dict[str, str]:
    """The inverse of read_settings: a settings dataclass's values as config.pbtxt strings (None -> empty)."""
    def text(value) -> str:
        if value is None:
            return ""
        if isinstance(value, bool):
            return str(value).lower()
        return ",".join(value) if isinstance(value, tuple) else str(value)
    return {f.name: text(getattr(settings, f.name)) for f in dataclasses.fields(settings)}


def model_parameters(args: dict) -> dict[str, str]:
    """`parameters` of the model config passed to initialize(); an empty checkpoint_dir reads $NANOVL_CHECKPOINT."""
    config = json.loads(args["model_config"])
    params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
    if "checkpoint_dir" in params and not params["checkpoint_dir"]:
        params["checkpoint_dir"] = os.environ.get(CHECKPOINT_ENV, "")
        if not params["checkpoint_dir"]:
            raise ServerError(f"model {config.get('name')}: set parameter checkpoint_dir or ${CHECKPOINT_ENV}")
    return params
