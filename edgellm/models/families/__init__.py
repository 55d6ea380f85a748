"""Model families, each declared once: one module per family (llama.py, qwen.py, phi3.py,
gemma.py, gpt2.py, ...), each class holding its shape for the planner, its Hugging Face tensor
names, its GGUF names and transforms, its ONNX graph options, and what edgellm can build for it
(``supports``).  Adding a llama-like family is one such module plus its tiny test fixture."""

from edgellm.models.families import gemma, gpt2, granite, lfm2, llama, moe, phi3, qwen, smollm3  # noqa: F401  (they register)
from edgellm.models.families.base import Family
from edgellm.models.families.registry import (REGISTRY, family_for, family_of, from_config_dict, register,
                                              student_config, supported, with_legacy_rope_keys)

__all__ = ["Family", "REGISTRY", "family_for", "family_of", "from_config_dict", "register", "student_config",
           "supported", "with_legacy_rope_keys"]
