"""LFM2 (Liquid AI's on-device models, LFM2-350M ... 2.6B): a hybrid of gated short convolutions and
grouped-query attention with per-head q/k norms.

A convolution layer projects the normed input to B, C and x (``in_proj``, 3 x hidden), multiplies
B and x, runs a causal depthwise convolution over the last ``conv_L_cache`` positions, gates with
C and projects back (``out_proj``).  It keeps no KV cache, only its last ``conv_L_cache - 1``
inputs: the plan counts KV for the attention layers alone plus that fixed float32 state (llama.cpp's
``n_embd_r``).  The final norm is stored as ``embedding_norm`` (llama.cpp: token_embd_norm).  The
convolution kernels stay float32, never quantized, as llama.cpp keeps them.  GGUF only: ONNX
Runtime has no fused op for the stateful convolution, so ONNX and the NPU graph refuse LFM2 in one
line, as do distillation and calibration (their layer code is attention-only).
"""

from __future__ import annotations

from edgellm.errors import BadInput
from edgellm.models.families.base import Family
from edgellm.models.families.registry import register
from edgellm.models.tensors import TensorSpec


@register
class Lfm2(Family):
    model_types = ("lfm2",)
    gguf_arch = "lfm2"
    qk_norm = True
    supports = frozenset({"gguf"})
    default_tied = True

    # -- shape --------------------------------------------------------------------------------
    k_activation = ""           # transformers' LFM2 MLP is SiLU whatever the config says, as llama.cpp's

    def _check_layer_types(self, layers: int) -> None:
        """Convolution or attention per layer: checked by ``layer_kinds``."""

    def layer_kinds(self, layers: int) -> list[str]:
        """"conv" or "full_attention" per layer (config ``layer_types``, or older ``full_attn_idxs``)."""
        kinds = self.cfg.get("layer_types")
        if kinds is None:
            idxs = self.cfg.get("full_attn_idxs")
            idxs = list(range(layers)) if idxs is None else idxs
            if not isinstance(idxs, list) or not all(isinstance(i, int) for i in idxs):
                raise BadInput(f"{self.name}: config.json: 'full_attn_idxs' must be a list of layer numbers")
            kinds = ["full_attention" if i in idxs else "conv" for i in range(layers)]
        if not isinstance(kinds, list) or len(kinds) != layers or not set(kinds) <= {"conv", "full_attention"}:
            raise BadInput(f"{self.name}: config.json: 'layer_types' must list 'conv' or 'full_attention' "
                           f"for each of the {layers} layers")
        if len(set(kinds)) < 2:
            # llama.cpp aborts (a hybrid cache with no convolution state), transformers fails
            # (a cache with no attention layer): such a file would crash whoever runs it
            raise BadInput(f"{self.name}: config.json: an LFM2 model needs both convolution and attention "
                           f"layers; this one has only {kinds[0]!r} layers")
        return kinds

    @property
    def conv_cache(self) -> int:
        L = self.cfg.get("conv_L_cache", 3)
        if isinstance(L, bool) or not isinstance(L, int) or not 1 < L <= 64:
            raise BadInput(f"{self.name}: config.json: 'conv_L_cache' must be an integer from 2 to 64")
        return L

    def ffn_size(self, hidden: int) -> int:
        """transformers' Lfm2MLP: two thirds of intermediate_size, times the multiplier, rounded up
        to block_multiple_of (the rounding only with a multiplier, as transformers does)."""
        ff = self.need("intermediate_size")
        if self.cfg.get("block_auto_adjust_ff_dim", True):
            ff = int(2 * ff / 3)
            mult = self.cfg.get("block_ffn_dim_multiplier", 1.0)
            if mult is not None:
                of = self.cfg.get("block_multiple_of", 256)
                if isinstance(of, bool) or not isinstance(of, int) or of <= 0 or not isinstance(mult, (int, float)):
                    raise BadInput(f"{self.name}: config.json: 'block_multiple_of' and 'block_ffn_dim_multiplier' "
                                   "must be positive numbers")
                ff = of * ((int(mult * ff) + of - 1) // of)
        return ff

    @property
    def norm_eps(self) -> float:
        return float(self.cfg.get("norm_eps", 1e-5))

    def attention_layers(self, layers: int) -> tuple[bool, ...]:
        return tuple(k == "full_attention" for k in self.layer_kinds(layers))

    def state_elements(self) -> int:
        convs = self.layer_kinds(self.need(self.k_layers)).count("conv")
        return convs * (self.conv_cache - 1) * self.need(self.k_hidden)

    def tensors(self, hidden, n_layers, n_heads, n_kv_heads, head_dim, ffn, vocab,
                tied_embeddings) -> list[TensorSpec]:
        if self.cfg.get("conv_bias"):
            raise BadInput(f"{self.name}: config.json: convolutions with biases (conv_bias) are not supported yet")
        q, kv = n_heads * head_dim, n_kv_heads * head_dim
        out = [TensorSpec("token_embd.weight", hidden, vocab)]
        for i, kind in enumerate(self.layer_kinds(n_layers)):
            p = f"blk.{i}."
            layer = self.layer_tensors(p, hidden, q, kv, head_dim, ffn)      # an attention layer, llama-style
            if kind == "conv":                   # the same with a short convolution for the attention
                attention = (p + "attn_q", p + "attn_k", p + "attn_v", p + "attn_output")
                at = next(j for j, t in enumerate(layer) if t.name.startswith(attention))
                layer = [t for t in layer if not t.name.startswith(attention)]
                layer[at:at] = [TensorSpec(p + "shortconv.in_proj.weight", hidden, 3 * hidden),
                                TensorSpec(p + "shortconv.conv.weight", self.conv_cache, hidden),
                                TensorSpec(p + "shortconv.out_proj.weight", hidden, hidden)]
            out += layer
        out.append(TensorSpec("token_embd_norm.weight", hidden))
        if not tied_embeddings:
            out.append(TensorSpec("output.weight", hidden, vocab))
        return out

    def calibration_problem(self, fmt=None) -> str | None:
        return f"{self.name}: --calibrate does not support LFM2's convolution layers yet: export without it"

    # -- GGUF -----------------------------------------------------------------------------------
    @property
    def gguf_head_count_kv(self) -> list[int]:
        return [self.model.n_kv_heads if a else 0 for a in self.model.attention_layers]

    def add_metadata(self, w) -> None:
        super().add_metadata(w)
        w.add_shortconv_l_cache(self.conv_cache)

    def needs_transform(self, hf_name: str, gguf_name: str) -> bool:
        return gguf_name.endswith("shortconv.conv.weight") or super().needs_transform(hf_name, gguf_name)

    def transform(self, hf_name, gguf_name, data):
        if gguf_name.endswith("shortconv.conv.weight"):
            return data.reshape(data.shape[0], data.shape[-1])      # [hidden, 1, L] -> [hidden, L]
        return super().transform(hf_name, gguf_name, data)
