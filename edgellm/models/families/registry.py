"""The family registry, found by Hugging Face ``model_type``, and reading a config.json into a
typed shape through it."""

from __future__ import annotations

from typing import Any

from edgellm.errors import BadInput
from edgellm.models.config import ModelConfig
from edgellm.models.families.limits import check_values

REGISTRY: dict[str, type] = {}


def register(cls):
    for model_type in cls.model_types:
        REGISTRY[model_type] = cls
    return cls


def supported(what: str | None = None) -> list[str]:
    """Every model_type edgellm reads, or those it can build ``what`` for (a format key, "distill")."""
    return sorted(t for t, c in REGISTRY.items() if what is None or what in c.supports)


def family_of(model: ModelConfig):
    """The declared family of a parsed model."""
    return REGISTRY[model.model_type](model.raw, model.name, model)


def family_for(model: ModelConfig, what: str):
    """The family, checked able to build ``what``: otherwise one line saying why not."""
    family = family_of(model)
    problem = family.build_problem(what)
    if problem:
        raise BadInput(problem)
    return family


def with_legacy_rope_keys(cfg: dict[str, Any]) -> dict[str, Any]:
    """transformers 5 writes rotary settings as ``rope_parameters`` (per attention type for Gemma 3);
    4.x wrote ``rope_theta``, ``rope_scaling``, ``rope_local_base_freq`` and
    ``partial_rotary_factor``.  Everything in edgellm reads the 4.x keys, so a 5.x config gets them
    filled in (keys already present win)."""
    rp = cfg.get("rope_parameters")
    if not isinstance(rp, dict):
        return cfg
    cfg = dict(cfg)
    main = rp.get("full_attention", rp)
    local = rp.get("sliding_attention")
    if not isinstance(main, dict):
        return cfg
    if "rope_theta" in main:
        cfg.setdefault("rope_theta", main["rope_theta"])
    if isinstance(local, dict) and "rope_theta" in local:
        cfg.setdefault("rope_local_base_freq", local["rope_theta"])
    if "partial_rotary_factor" in main:
        cfg.setdefault("partial_rotary_factor", main["partial_rotary_factor"])
    kind = main.get("rope_type", main.get("type"))
    if kind not in (None, "default") and not cfg.get("rope_scaling"):
        cfg["rope_scaling"] = {k: v for k, v in main.items() if k not in ("rope_theta", "partial_rotary_factor")}
    return cfg


def from_config_dict(cfg: dict[str, Any], name: str) -> ModelConfig:
    """Build the typed shape for a parsed config.json, or explain why edgellm cannot."""
    if not isinstance(cfg, dict):
        raise BadInput(f"{name}: config.json must hold a JSON object")
    if isinstance(cfg.get("text_config"), dict):        # multimodal wrappers (Gemma 3 4B+)
        cfg = {**cfg["text_config"], "model_type": cfg["text_config"].get("model_type", cfg.get("model_type"))}
    cfg = with_legacy_rope_keys(cfg)
    model_type = cfg.get("model_type")
    if not isinstance(model_type, str):
        raise BadInput(f"{name}: config.json has no 'model_type'; is this a Hugging Face model?")
    family = REGISTRY.get(model_type)
    if family is None:
        custom = " (it ships custom code through auto_map)" if "auto_map" in cfg else ""
        raise BadInput(f"{name}: architecture '{model_type}' is not supported{custom}; "
                       f"supported: {', '.join(supported())}")
    archs = cfg.get("architectures") or []
    if not isinstance(archs, list) or not all(isinstance(a, str) for a in archs):
        raise BadInput(f"{name}: config.json: 'architectures' must be a list of class names")
    if archs and not any(a.endswith("ForCausalLM") or a.endswith("LMHeadModel") for a in archs):
        raise BadInput(f"{name}: {archs[0][:80]} is not a causal language model")
    check_values(cfg, name)
    try:
        return family(cfg, name).build()
    except (TypeError, ValueError, KeyError, AttributeError, IndexError, ZeroDivisionError, OverflowError) as e:
        # a field of the wrong shape that no bound above names: still one line, never a traceback
        raise BadInput(f"{name}: config.json has a value edgellm cannot use for {model_type} "
                       f"({type(e).__name__}: {str(e)[:120]})") from None


def student_config(model: ModelConfig, layers: int, width: float) -> ModelConfig:
    """The shape of a pruned student of ``model``: fewer layers and/or a narrower width."""
    return from_config_dict(family_of(model).shrunk(layers, width), f"student of {model.name}")
