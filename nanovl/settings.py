"""Stage settings from a Triton model config, without importing Triton."""
from __future__ import annotations

import json
import os

from .errors import ServerError

CHECKPOINT_ENV = "NANOVL_CHECKPOINT"


def parameter_flag(params: dict[str, str], key: str, default: bool = False) -> bool:
    """A boolean stage parameter: 1/true/yes/on (any case) is true; absent or empty is the default."""
    value = params.get(key, "").strip().lower()
    return default if value == "" else value in ("1", "true", "yes", "on")


def model_parameters(args: dict) -> dict[str, str]:
    """`parameters` of the model config passed to initialize(); an empty checkpoint_dir reads $NANOVL_CHECKPOINT."""
    config = json.loads(args["model_config"])
    params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
    if "checkpoint_dir" in params and not params["checkpoint_dir"]:
        params["checkpoint_dir"] = os.environ.get(CHECKPOINT_ENV, "")
        if not params["checkpoint_dir"]:
            raise ServerError(f"model {config.get('name')}: set parameter checkpoint_dir or ${CHECKPOINT_ENV}")
    return params
