"""Models: reading a model's shape (config.json) into a typed :class:`ModelConfig`."""

from __future__ import annotations

import dataclasses

from edgellm.models.families import from_config_dict, supported
from edgellm.models.config import ModelConfig
from edgellm.models.source import ConfigSource, bundled_ids, locate
from edgellm.models.tensors import TensorSpec


def load_config(model: str) -> ModelConfig:
    """Read the shape of ``model`` (a folder, a config.json, or a hub id); no weights, no code."""
    src = locate(model)
    cfg = from_config_dict(src.data, model)
    return dataclasses.replace(cfg, source=f"{src.where}: {src.path}")


__all__ = ["ConfigSource", "ModelConfig", "TensorSpec", "bundled_ids", "from_config_dict",
           "load_config", "locate", "supported"]
