"""Supported architectures: one small declarative class per family, found by ``model_type``.

Each class says how its config.json names the shape and which tensors it has (GGUF names, as
llama.cpp's converter writes them: gguf-py ``tensor_mapping.py``).  A new family is a subclass
with a few attributes changed, registered with ``@register``.
"""

from __future__ import annotations

from typing import Any, ClassVar

from edgellm.errors import BadInput
from edgellm.models.config import ModelConfig
from edgellm.models.tensors import TensorSpec

REGISTRY: dict[str, type["Architecture"]] = {}
WHAT = {"gguf": "GGUF export", "onnx": "ONNX export", "onnx-npu": "the static NPU build",
        "distill": "distillation"}


def register(cls: type["Architecture"]) -> type["Architecture"]:
    for model_type in cls.model_types:
        REGISTRY[model_type] = cls
    return cls


def supported() -> list[str]:
    return sorted(REGISTRY)


class Architecture:
    """Llama-style decoder: RMSNorm, rotary attention (GQA), gated MLP.  Subclasses flip flags."""

    model_types: ClassVar[tuple[str, ...]] = ()
    gguf_arch: ClassVar[str] = ""
    # config.json key names
    k_hidden: ClassVar[str] = "hidden_size"
    k_layers: ClassVar[str] = "num_hidden_layers"
    k_heads: ClassVar[str] = "num_attention_heads"
    k_ffn: ClassVar[str] = "intermediate_size"
    k_context: ClassVar[str] = "max_position_embeddings"
    default_tied: ClassVar[bool] = False
    # layout flags
    qkv_bias: ClassVar[bool] = False          # biases on q/k/v projections
    qk_norm: ClassVar[bool] = False           # per-head RMSNorm on q and k
    post_norms: ClassVar[bool] = False        # extra norms after attention and MLP (Gemma 2/3)
    fused_qkv: ClassVar[bool] = False         # one attn_qkv matrix
    fused_gate_up: ClassVar[bool] = False     # gate and up stored as one ffn_up of 2x rows
    gated_ffn: ClassVar[bool] = True
    sliding_window_attention: ClassVar[bool] = False   # llama.cpp keeps a windowed KV cache
    # what edgellm can build for this family: "gguf", "onnx", "onnx-npu" (plan/formats.py keys)
    # and "distill"; the planner offers nothing else
    supports: ClassVar[frozenset[str]] = frozenset({"gguf", "onnx", "onnx-npu", "distill"})

    def __init__(self, cfg: dict[str, Any], name: str):
        self.cfg = cfg
        self.name = name

    def build_problem(self, what: str) -> str | None:
        """Why edgellm cannot build ``what`` (a format key or "distill") for this model; None
        when it can."""
        noun = WHAT.get(what, what)
        model_type = self.cfg.get("model_type")
        if what not in self.supports:
            able = sorted(t for t, a in REGISTRY.items() if what in a.supports)
            return f"{self.name}: {noun} does not support '{model_type}' yet; supported: {', '.join(able)}"
        if what.startswith("onnx"):
            rope = self.cfg.get("rope_scaling") or {}
            kind = rope.get("rope_type", rope.get("type")) if isinstance(rope, dict) else "?"
            if kind not in (None, "default", "linear", "llama3"):
                return f"{self.name}: rope scaling {kind!r} is not supported by {noun} yet"
            if self.cfg.get("partial_rotary_factor", 1.0) != 1.0:
                return f"{self.name}: partial rotary embeddings are not supported by {noun} yet"
        return None

    # -- reading config.json ------------------------------------------------------------------
    def need(self, key: str) -> Any:
        value = self.cfg.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            got = "missing" if key not in self.cfg else f"{value!r}"
            raise BadInput(f"{self.name}: config.json: '{key}' must be a positive integer "
                           f"for {self.cfg.get('model_type')} models ({got})")
        return value

    def build(self) -> ModelConfig:
        hidden = self.need(self.k_hidden)
        heads = self.need(self.k_heads)
        kv = self.cfg.get("num_key_value_heads") or heads
        head_dim = self.cfg.get("head_dim") or hidden // heads
        if heads % kv:
            raise BadInput(f"{self.name}: config.json: num_attention_heads ({heads}) is not a "
                           f"multiple of num_key_value_heads ({kv})")
        layers = self.need(self.k_layers)
        tied = self.cfg.get("tie_word_embeddings", self.default_tied)
        ffn = self.ffn_size(hidden)
        vocab = self.need("vocab_size")
        shape = dict(hidden=hidden, n_layers=layers, n_heads=heads, n_kv_heads=kv,
                     head_dim=head_dim, ffn=ffn, vocab=vocab, tied_embeddings=bool(tied))
        return ModelConfig(name=self.name, model_type=self.cfg["model_type"],
                           max_context=int(self.cfg.get(self.k_context) or 0),
                           windows=self.windows(layers), tensors=tuple(self.tensors(**shape)),
                           raw=self.cfg, **shape)

    def shrunk(self, layers: int, width: float) -> dict[str, Any]:
        """config.json of a smaller student of this family: ``layers`` deep, hidden, MLP and
        head counts scaled by ``width`` (head size kept), as width/depth pruning produces."""
        cfg = dict(self.cfg)
        heads, hidden = self.need(self.k_heads), self.need(self.k_hidden)
        head_dim = cfg.get("head_dim") or hidden // heads
        kv = cfg.get("num_key_value_heads") or heads
        new_kv = max(1, round(kv * width))
        group = max(1, heads // kv)
        cfg[self.k_heads] = new_kv * group
        cfg[self.k_hidden] = max(64, round(hidden * width / 64) * 64)
        cfg["head_dim"] = head_dim
        if "num_key_value_heads" in cfg or kv != heads:
            cfg["num_key_value_heads"] = new_kv
        cfg[self.k_layers] = layers
        self.scale_ffn(cfg, width)
        cfg.pop("layer_types", None)
        return cfg

    def scale_ffn(self, cfg: dict[str, Any], width: float) -> None:
        cfg[self.k_ffn] = max(256, round(self.need(self.k_ffn) * width / 256) * 256)

    def ffn_size(self, hidden: int) -> int:
        return self.need(self.k_ffn)

    def windows(self, layers: int) -> tuple[int | None, ...]:
        """Attention window per layer, for architectures whose llama.cpp cache honours it."""
        window = self.cfg.get("sliding_window")
        if not self.sliding_window_attention or not window:
            return (None,) * layers
        types = self.cfg.get("layer_types")
        if isinstance(types, list) and len(types) == layers:
            return tuple(window if t == "sliding_attention" else None for t in types)
        return tuple(window if self.is_sliding(i) else None for i in range(layers))

    def is_sliding(self, layer: int) -> bool:
        return False

    # -- tensors --------------------------------------------------------------------------------
    def tensors(self, hidden, n_layers, n_heads, n_kv_heads, head_dim, ffn, vocab,
                tied_embeddings) -> list[TensorSpec]:
        q, kv = n_heads * head_dim, n_kv_heads * head_dim
        out = [TensorSpec("token_embd.weight", hidden, vocab)]
        out += self.global_extras(head_dim)
        for i in range(n_layers):
            out += self.layer(f"blk.{i}.", hidden, q, kv, head_dim, ffn)
        out += [TensorSpec("output_norm.weight", hidden)] + self.output_norm_extras(hidden)
        if not tied_embeddings:
            out.append(TensorSpec("output.weight", hidden, vocab))
        return out

    def layer(self, p, hidden, q, kv, head_dim, ffn) -> list[TensorSpec]:
        t = [TensorSpec(p + "attn_norm.weight", hidden)]
        if self.fused_qkv:
            t.append(TensorSpec(p + "attn_qkv.weight", hidden, q + 2 * kv))
        else:
            t += [TensorSpec(p + "attn_q.weight", hidden, q), TensorSpec(p + "attn_k.weight", hidden, kv),
                  TensorSpec(p + "attn_v.weight", hidden, kv)]
        if self.qkv_bias:
            t += [TensorSpec(p + "attn_q.bias", q), TensorSpec(p + "attn_k.bias", kv),
                  TensorSpec(p + "attn_v.bias", kv)]
        if self.qk_norm:
            t += [TensorSpec(p + "attn_q_norm.weight", head_dim), TensorSpec(p + "attn_k_norm.weight", head_dim)]
        t.append(TensorSpec(p + "attn_output.weight", q, hidden))
        if self.post_norms:
            t.append(TensorSpec(p + "post_attention_norm.weight", hidden))
        t.append(TensorSpec(p + "ffn_norm.weight", hidden))
        if self.fused_gate_up:
            t.append(TensorSpec(p + "ffn_up.weight", hidden, 2 * ffn))
        elif self.gated_ffn:
            t += [TensorSpec(p + "ffn_gate.weight", hidden, ffn), TensorSpec(p + "ffn_up.weight", hidden, ffn)]
        else:
            t.append(TensorSpec(p + "ffn_up.weight", hidden, ffn))
        t.append(TensorSpec(p + "ffn_down.weight", ffn, hidden))
        if self.post_norms:
            t.append(TensorSpec(p + "post_ffw_norm.weight", hidden))
        return t

    def global_extras(self, head_dim: int) -> list[TensorSpec]:
        """Non-parameter tables the converter adds (rope frequency factors)."""
        rope = self.cfg.get("rope_scaling") or {}
        if rope.get("rope_type", rope.get("type")) == "llama3":
            return [TensorSpec("rope_freqs.weight", head_dim // 2, is_param=False)]
        return []

    def output_norm_extras(self, hidden: int) -> list[TensorSpec]:
        return []


@register
class Llama(Architecture):
    """Llama 2/3, SmolLM, TinyLlama and other LlamaForCausalLM checkpoints."""
    model_types = ("llama",)
    gguf_arch = "llama"


@register
class Mistral(Llama):
    """Mistral 7B: a llama layout; llama.cpp keeps a full (not windowed) cache for it."""
    model_types = ("mistral",)


@register
class Qwen2(Architecture):
    model_types = ("qwen2",)
    gguf_arch = "qwen2"
    qkv_bias = True


@register
class Qwen3(Architecture):
    model_types = ("qwen3",)
    gguf_arch = "qwen3"
    qk_norm = True
    supports = frozenset({"gguf", "onnx", "distill"})


@register
class Phi3(Architecture):
    """Phi-3/3.5 mini: fused qkv and gate_up; long-context variants carry rope factor tables."""
    model_types = ("phi3",)
    gguf_arch = "phi3"
    fused_qkv = True
    fused_gate_up = True
    supports = frozenset({"gguf", "onnx", "onnx-npu"})

    def global_extras(self, head_dim: int) -> list[TensorSpec]:
        rope = self.cfg.get("rope_scaling") or {}
        if rope.get("type", rope.get("rope_type")) in ("longrope", "su"):
            half = head_dim // 2
            return [TensorSpec("rope_factors_long.weight", half, is_param=False),
                    TensorSpec("rope_factors_short.weight", half, is_param=False)]
        return []


@register
class Gemma(Architecture):
    model_types = ("gemma",)
    gguf_arch = "gemma"
    default_tied = True
    supports = frozenset({"gguf", "onnx"})


@register
class Gemma2(Gemma):
    """Gemma 2: post-norms, and every other layer attends within a sliding window."""
    model_types = ("gemma2",)
    gguf_arch = "gemma2"
    post_norms = True
    sliding_window_attention = True
    supports = frozenset({"gguf"})

    def is_sliding(self, layer: int) -> bool:
        return layer % 2 == 0


@register
class Gemma3(Gemma2):
    """Gemma 3 text models: q/k norms; five of every six layers are windowed."""
    model_types = ("gemma3_text", "gemma3")
    gguf_arch = "gemma3"
    qk_norm = True

    def is_sliding(self, layer: int) -> bool:
        pattern = self.cfg.get("sliding_window_pattern") or 6
        return (layer + 1) % pattern != 0


@register
class GPT2(Architecture):
    """GPT-2: LayerNorm with bias, biased linears, learned positions, fused qkv, tied head."""
    model_types = ("gpt2",)
    gguf_arch = "gpt2"
    k_hidden, k_layers, k_heads, k_context = "n_embd", "n_layer", "n_head", "n_positions"
    default_tied = True
    fused_qkv = True
    gated_ffn = False
    supports = frozenset({"gguf"})

    def ffn_size(self, hidden: int) -> int:
        return self.cfg.get("n_inner") or 4 * hidden

    def scale_ffn(self, cfg: dict[str, Any], width: float) -> None:
        cfg["n_inner"] = max(256, round(self.ffn_size(self.need("n_embd")) * width / 256) * 256)

    def global_extras(self, head_dim: int) -> list[TensorSpec]:
        return [TensorSpec("position_embd.weight", self.need("n_embd"), self.need("n_positions"))]

    def layer(self, p, hidden, q, kv, head_dim, ffn) -> list[TensorSpec]:
        t = super().layer(p, hidden, q, kv, head_dim, ffn)
        biases = {"attn_norm": hidden, "attn_qkv": 3 * hidden, "attn_output": hidden,
                  "ffn_norm": hidden, "ffn_up": ffn, "ffn_down": hidden}
        return t + [TensorSpec(f"{p}{k}.bias", n) for k, n in biases.items()]

    def output_norm_extras(self, hidden: int) -> list[TensorSpec]:
        return [TensorSpec("output_norm.bias", hidden)]


def family_of(model: ModelConfig) -> Architecture:
    """The declared family of a parsed model."""
    return REGISTRY[model.model_type](model.raw, model.name)


def student_config(model: ModelConfig, layers: int, width: float) -> ModelConfig:
    """The shape of a pruned student of ``model``: fewer layers and/or a narrower width."""
    return from_config_dict(family_of(model).shrunk(layers, width), f"student of {model.name}")


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
    if isinstance(cfg.get("text_config"), dict):        # multimodal wrappers (Gemma 3 4B+)
        cfg = {**cfg["text_config"], "model_type": cfg["text_config"].get("model_type", cfg.get("model_type"))}
    cfg = with_legacy_rope_keys(cfg)
    model_type = cfg.get("model_type")
    if not isinstance(model_type, str):
        raise BadInput(f"{name}: config.json has no 'model_type'; is this a Hugging Face model?")
    arch = REGISTRY.get(model_type)
    if arch is None:
        custom = " (it ships custom code through auto_map)" if "auto_map" in cfg else ""
        raise BadInput(f"{name}: architecture '{model_type}' is not supported{custom}; "
                       f"supported: {', '.join(supported())}")
    archs = cfg.get("architectures") or []
    if archs and not any(a.endswith("ForCausalLM") or a.endswith("LMHeadModel") for a in archs):
        raise BadInput(f"{name}: {archs[0]} is not a causal language model")
    return arch(cfg, name).build()
