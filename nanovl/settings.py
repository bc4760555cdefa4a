"""Stage settings from a Triton model config, without importing Triton."""
from __future__ import annotations

import json
import os

from .errors import ServerError

CHECKPOINT_ENV = "NANOVL_CHECKPOINT"


def model_parameters(args: dict) -> dict[str, str]:
    """`parameters` of the model config passed to initialize(); an empty checkpoint_dir reads $NANOVL_CHECKPOINT."""
    config = json.loads(args["model_config"])
    params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
    if "checkpoint_dir" in params and not params["checkpoint_dir"]:
        params["checkpoint_dir"] = os.environ.get(CHECKPOINT_ENV, "")
        if not params["checkpoint_dir"]:
            raise ServerError(f"model {config.get('name')}: set parameter checkpoint_dir or ${CHECKPOINT_ENV}")
    return params
