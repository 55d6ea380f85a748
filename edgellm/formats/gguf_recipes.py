"""llama.cpp's mixed per-tensor recipes: which ggml type each tensor gets for a GGUF file type.

A faithful port of ``llama_tensor_get_type_impl`` in llama.cpp's src/llama-quant.cpp (the copy
vendored in llama-cpp-python 0.3.36), for the file types edgellm offers, without an importance
matrix.  Each file type is one small class; each rule names the tensor category it refines.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import ClassVar

from edgellm.models.config import ModelConfig
from edgellm.models.tensors import TensorSpec
from edgellm.formats.ggml_types import TYPES, fit_type

RECIPES: dict[str, type["Recipe"]] = {}


def register(cls: type["Recipe"]) -> type["Recipe"]:
    RECIPES[cls.name] = cls
    return cls


@lru_cache(maxsize=65536)
def category(name: str) -> str:
    """llama.cpp's tensor categories (tensor_get_category); attn_qkv counts as attn_v."""
    if name == "output.weight":
        return "output"
    if name == "token_embd.weight":
        return "token_embd"
    for key, cat in (("attn_qkv.weight", "attn_v"), ("attn_v.weight", "attn_v"),
                     ("attn_k.weight", "attn_k"), ("attn_q.weight", "attn_q"),
                     ("attn_output.weight", "attn_output"), ("ffn_up", "ffn_up"),
                     ("ffn_gate", "ffn_gate"), ("ffn_down", "ffn_down")):
        if key in name:
            return cat
    return "other"


def use_more_bits(i: int, n: int) -> bool:
    """The layers llama.cpp gives more bits: the first and last eighth, and every third between."""
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


@dataclass
class Context:
    model: ModelConfig
    is_70b: bool
    n_attn_v: int
    n_ffn_down: int
    n_expert: int = 1
    i_attn_v: int = 0


class Recipe:
    """A GGUF file type: the base type, refined per tensor category by the methods below."""

    name: ClassVar[str]
    base: ClassVar[str]
    # an 8-expert model's attn_output is Q5_K for these file types (Mixtral-8x7B), else the base
    moe8_attn_output_q5k: ClassVar[bool] = False

    def types(self, model: ModelConfig) -> list[tuple[TensorSpec, str]]:
        """Each tensor with the ggml type llama.cpp's quantizer would give it."""
        ctx = Context(model, is_70b=model.model_type == "llama" and model.n_layers == 80
                      and model.n_heads != model.n_kv_heads,
                      n_attn_v=sum(category(t.name) == "attn_v" for t in model.tensors),
                      n_ffn_down=sum(category(t.name) == "ffn_down" for t in model.tensors),
                      n_expert=model.n_experts)
        out = []
        for t in model.tensors:
            if not t.is_matrix or t.kept_f32:
                out.append((t, "F32"))
            elif not t.quantizable or self.base in ("F16", "F32", "BF16"):
                out.append((t, "F16" if t.is_matrix else "F32"))
            else:
                out.append((t, fit_type(self.pick(t, ctx), t.ne0)))
        return out

    def pick(self, t: TensorSpec, ctx: Context) -> str:
        cat = category(t.name)
        if cat == "output" or (cat == "token_embd" and ctx.model.tied_embeddings):
            return self.output(t)
        if cat == "attn_v":
            new = self.attn_v(ctx)
            if ctx.is_70b and new in ("Q3_K", "Q4_K"):
                new = "Q5_K"
            if ctx.n_expert == 8:            # "for the 8-expert model, bumping this to Q8_0 trades just ~128MB"
                new = "Q8_0"
            ctx.i_attn_v += 1
            return new
        if cat == "attn_k" and ctx.n_expert == 8:
            return "Q8_0"
        if cat == "ffn_down":
            # the layer from the name (llama.cpp parses it when experts are stacked), counted among
            # the ffn_down tensors: one per layer, dense or merged experts alike
            return self.ffn_down(t.layer or 0, ctx.n_ffn_down)
        if cat == "attn_output":
            if ctx.n_expert == 8:
                return "Q5_K" if self.moe8_attn_output_q5k else self.base
            return self.attn_output()
        return self.base

    def output(self, t: TensorSpec) -> str:
        if t.ne0 % TYPES[self.base].block:
            return "Q8_0"
        return self.base if self.base == "Q8_0" else "Q6_K"

    def attn_v(self, ctx: Context) -> str:
        return self.base

    def ffn_down(self, i: int, n: int) -> str:
        return self.base

    def attn_output(self) -> str:
        return self.base


@register
class F16(Recipe):
    name, base = "F16", "F16"


@register
class Q8_0(Recipe):
    name, base = "Q8_0", "Q8_0"


@register
class Q6_K(Recipe):
    name, base = "Q6_K", "Q6_K"


@register
class Q5_K_M(Recipe):
    name, base = "Q5_K_M", "Q5_K"

    def attn_v(self, ctx: Context) -> str:
        return "Q6_K" if use_more_bits(ctx.i_attn_v, ctx.n_attn_v) else self.base

    def ffn_down(self, i: int, n: int) -> str:
        return "Q6_K" if use_more_bits(i, n) else self.base


@register
class Q4_K_M(Q5_K_M):
    name, base = "Q4_K_M", "Q4_K"
    moe8_attn_output_q5k = True


@register
class Q4_0(Recipe):
    name, base = "Q4_0", "Q4_0"


@register
class IQ4_XS(Recipe):
    name, base = "IQ4_XS", "IQ4_XS"
    moe8_attn_output_q5k = True

    def attn_v(self, ctx: Context) -> str:
        return "Q5_K" if ctx.model.gqa_ratio >= 4 else self.base

    def ffn_down(self, i: int, n: int) -> str:
        return "Q5_K" if i < n // 8 else self.base     # without an importance matrix


@register
class Q3_K_M(Recipe):
    name, base = "Q3_K_M", "Q3_K"
    moe8_attn_output_q5k = True

    def attn_v(self, ctx: Context) -> str:
        return "Q5_K" if ctx.i_attn_v < 2 else "Q4_K"

    def ffn_down(self, i: int, n: int) -> str:
        return "Q5_K" if i < n // 16 else "Q4_K"

    def attn_output(self) -> str:
        return "Q4_K"


@register
class Q2_K(Recipe):
    name, base = "Q2_K", "Q2_K"
    moe8_attn_output_q5k = True

    def attn_v(self, ctx: Context) -> str:
        return "Q4_K" if ctx.model.gqa_ratio >= 4 else "Q3_K"

    def ffn_down(self, i: int, n: int) -> str:
        return "Q3_K"

    def attn_output(self) -> str:
        return "Q3_K"


def tensor_types(model: ModelConfig, ftype: str) -> list[tuple[TensorSpec, str]]:
    """Memoized per model: the planner asks once per KV-cache variant and per runtime unit."""
    cache = model.__dict__.setdefault("_recipe_cache", {})
    if ftype not in cache:
        cache[ftype] = RECIPES[ftype]().types(model)
    return cache[ftype]
