"""Llama (Llama 2/3, SmolLM, TinyLlama) and Mistral: the llama layout itself."""

from __future__ import annotations

from typing import Iterator

import numpy as np

from edgellm.models.families.base import Family
from edgellm.models.families.registry import register
from edgellm.models.families.rope import llama3_factors, rope_kind


@register
class Llama(Family):
    """Llama 2/3, SmolLM, TinyLlama and other LlamaForCausalLM checkpoints."""
    model_types = ("llama",)
    gguf_arch = "llama"
    permute_rotary = True
    gguf_rope_kinds = (None, "default", "linear", "llama3")

    def extra_tensors(self) -> Iterator[tuple[str, np.ndarray]]:
        """Llama 3.1+ rope scaling as a frequency-factor table (convert_hf_to_gguf.py)."""
        if rope_kind(self.cfg) == "llama3":
            yield "rope_freqs.weight", llama3_factors(self.cfg, self.model.head_dim, np.float32)


@register
class Mistral(Llama):
    """Mistral 7B: a llama layout; llama.cpp keeps a full (not windowed) cache for it."""
    model_types = ("mistral",)
