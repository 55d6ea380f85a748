"""A family's shape: how its config.json names the sizes, which tensors it has (GGUF names, as
llama.cpp's converter writes them: gguf-py ``tensor_mapping.py``), the student shapes pruning
makes, and what edgellm can build for it.  What the planner needs; no weights, no torch."""

from __future__ import annotations

from typing import Any, ClassVar

from edgellm.errors import BadInput
from edgellm.models.config import ModelConfig
from edgellm.models.families.rope import longrope_factors, rope_kind, rotary_dim
from edgellm.models.tensors import TensorSpec

WHAT = {"gguf": "GGUF export", "onnx": "ONNX export", "onnx-npu": "the static NPU build",
        "distill": "distillation"}


# The format registry's entries by key, kept here by ``edgellm.formats.register``: the families
# stand below the formats and ask a format about themselves through this, never by importing it.
FORMAT_ENTRIES: dict[str, object] = {}


# the activation names transformers gives each function llama.cpp's graphs compute
ACTIVATIONS = {"silu": frozenset({"silu", "swish"}), "gelu_tanh": frozenset({"gelu_pytorch_tanh", "gelu_new"})}


class Shape:
    """Llama-style decoder: RMSNorm, rotary attention (GQA), gated MLP.  Families flip flags."""

    model_types: ClassVar[tuple[str, ...]] = ()
    gguf_arch: ClassVar[str] = ""
    # config.json key names
    k_hidden: ClassVar[str] = "hidden_size"
    k_layers: ClassVar[str] = "num_hidden_layers"
    k_heads: ClassVar[str] = "num_attention_heads"
    k_ffn: ClassVar[str] = "intermediate_size"
    k_context: ClassVar[str] = "max_position_embeddings"
    k_activation: ClassVar[str] = "hidden_act"   # the key transformers reads the MLP's activation from ("": none)
    activation_aliases: ClassVar[frozenset[str]] = frozenset()   # other names transformers maps onto it
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

    def __init__(self, cfg: dict[str, Any], name: str, model: ModelConfig | None = None):
        self.cfg = cfg
        self.name = name
        self._model = model

    @property
    def model(self) -> ModelConfig:
        """The typed shape (built from config.json on first use)."""
        if self._model is None:
            self._model = self.build()
        return self._model

    def build_problem(self, what: str) -> str | None:
        """Why edgellm cannot build ``what`` (a format key or "distill") for this model; None
        when it can."""
        noun = WHAT.get(what, what)
        model_type = self.cfg.get("model_type")
        if what not in self.supports:
            from edgellm.models.families.registry import REGISTRY
            able = sorted(t for t, a in REGISTRY.items() if what in a.supports)
            return f"{self.name}: {noun} does not support '{model_type}' yet; supported: {', '.join(able)}"
        fmt = FORMAT_ENTRIES.get(what)
        return fmt.family_problem(self, noun) if fmt is not None else None

    @property
    def rotary_dim(self) -> int:
        """How many of each head's dimensions the rotary embedding turns."""
        return rotary_dim(self.cfg, self.cfg.get("head_dim") or self.need(self.k_hidden) // self.need(self.k_heads))

    def calibration_problem(self, fmt=None) -> str | None:
        """Why ``--calibrate`` cannot run on this family (for ``fmt``, a registered format; None:
        any); None when it can."""
        return None

    def checkpoint_parts(self, name: str) -> list[tuple[str, ...]] | None:
        """The checkpoint tensors transformers builds its model's parameter ``name`` from, where
        the checkpoint has no tensor of that name (calibration runs transformers' own layers on
        the checkpoint's tensors): one tuple per slice along the parameter's first dimension, its
        tensors concatenated along their rows.  None: the checkpoint holds ``name`` itself."""
        return None

    def format_problem(self, fmt) -> str | None:
        """A family's own limit in format ``fmt`` (a registered format, which asks): None here."""
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
        self._check_activation()
        self._check_layer_types(layers)
        if "partial_rotary_factor" in self.cfg and (self.rotary_dim < 2 or self.rotary_dim % 2):
            raise BadInput(f"{self.name}: config.json: partial_rotary_factor "
                           f"{self.cfg['partial_rotary_factor']!r} turns {self.rotary_dim} of {head_dim} "
                           "head dimensions; a rotary embedding needs an even number, at least 2")
        if rope_kind(self.cfg) in ("longrope", "su"):
            longrope_factors(self.cfg, self.rotary_dim, self.name)      # checked before any work
        tied = self.cfg.get("tie_word_embeddings", self.default_tied)
        ffn = self.ffn_size(hidden)
        vocab = self.need("vocab_size")
        shape = dict(hidden=hidden, n_layers=layers, n_heads=heads, n_kv_heads=kv,
                     head_dim=head_dim, ffn=ffn, vocab=vocab, tied_embeddings=bool(tied))
        return ModelConfig(name=self.name, model_type=self.cfg["model_type"],
                           max_context=int(self.cfg.get(self.k_context) or 0),
                           windows=self.windows(layers), tensors=tuple(self.tensors(**shape)),
                           attention_layers=self.attention_layers(layers), state_elements=self.state_elements(),
                           raw=self.cfg, **shape)

    def _check_activation(self) -> None:
        """The MLP's activation in config.json is the one llama.cpp's graph for the family and
        edgellm's ONNX graph compute (``activation``): transformers runs whatever the config names,
        so another one would make a file that is a different model, caught (if at all) only by a
        quality number after the whole export."""
        value = self.cfg.get(self.k_activation) if self.k_activation else None
        accepted = ACTIVATIONS.get(self.activation, frozenset({self.activation})) | self.activation_aliases
        if value is not None and (not isinstance(value, str) or value not in accepted):
            raise BadInput(f"{self.name}: config.json: {self.k_activation} {str(value)[:40]!r}, but llama.cpp's "
                           f"{self.gguf_arch} graph and edgellm's ONNX graph compute {' / '.join(sorted(accepted))}; "
                           "the file would be a different model")

    def _check_layer_types(self, layers: int) -> None:
        """``layer_types`` (transformers 5) names each layer's attention.  Where the family has
        sliding-window layers, transformers follows the list and llama.cpp its own pattern
        (``is_sliding``), so the list must name that layout; elsewhere it must at least be one
        of the two kinds per layer.  Families whose layers are not all attention override this."""
        if (self.sliding_window_attention and self.cfg.get("sliding_window") == 0
                and any(self.is_sliding(i) for i in range(layers))):
            raise BadInput(f"{self.name}: config.json: sliding-window layers need a 'sliding_window' of at least 1")
        types = self.cfg.get("layer_types")
        if types is None:
            return
        want = ["sliding_attention" if self.is_sliding(i) else "full_attention" for i in range(layers)]
        if not self.sliding_window_attention:   # (a window llama.cpp does not keep: accepted as before)
            if (isinstance(types, list) and len(types) == layers
                    and all(t in ("full_attention", "sliding_attention") for t in types)):
                return
            raise BadInput(f"{self.name}: config.json: layer_types must name 'full_attention' or "
                           f"'sliding_attention' for each of the {layers} layers")
        if types != want:
            full = [str(i) for i in range(layers) if not self.is_sliding(i)]
            raise BadInput(f"{self.name}: config.json: layer_types {str(types)[:80]} is not the layout llama.cpp's "
                           f"{self.gguf_arch} graph runs (full attention on layer(s) {', '.join(full[:6]) or 'none'}"
                           f"{', ...' if len(full) > 6 else ''}, a sliding window elsewhere); the file would be a "
                           "different model")

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

    def student_problem(self, cfg: dict[str, Any]) -> str | None:
        """Why a student config of this family could not be exported; None when it can."""
        return None

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

    def attention_layers(self, layers: int) -> tuple[bool, ...]:
        """Which layers attend (empty: all of them)."""
        return ()

    def state_elements(self) -> int:
        """float32 elements of per-sequence state beside the KV cache (convolution caches)."""
        return 0

    # -- tensors --------------------------------------------------------------------------------
    def tensors(self, hidden, n_layers, n_heads, n_kv_heads, head_dim, ffn, vocab,
                tied_embeddings) -> list[TensorSpec]:
        q, kv = n_heads * head_dim, n_kv_heads * head_dim
        out = [TensorSpec("token_embd.weight", hidden, vocab)]
        out += self.global_extras(head_dim)
        for i in range(n_layers):
            out += self.layer_tensors(f"blk.{i}.", hidden, q, kv, head_dim, ffn)
        out += [TensorSpec("output_norm.weight", hidden)] + self.output_norm_extras(hidden)
        if not tied_embeddings:
            out.append(TensorSpec("output.weight", hidden, vocab))
        return out

    def layer_tensors(self, p, hidden, q, kv, head_dim, ffn) -> list[TensorSpec]:
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
        if rope_kind(self.cfg) == "llama3":
            return [TensorSpec("rope_freqs.weight", head_dim // 2, is_param=False)]
        return []

    def output_norm_extras(self, hidden: int) -> list[TensorSpec]:
        return []
