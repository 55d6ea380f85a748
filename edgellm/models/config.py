"""A model's shape, read from its Hugging Face ``config.json``: everything the planner needs.

Only the shape is read; no weights, no code.  Architecture-specific field names and layouts are
handled by the classes in :mod:`edgellm.models.families`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

from edgellm.models.tensors import TensorSpec


@dataclass(frozen=True)
class ModelConfig:
    name: str                        # what the user typed (path or hub id)
    model_type: str                  # HF model_type, e.g. "qwen2"
    hidden: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    ffn: int
    vocab: int
    tied_embeddings: bool
    max_context: int
    # per-layer attention window: None for full attention, else the window length
    windows: tuple[int | None, ...] = ()
    tensors: tuple[TensorSpec, ...] = field(default=(), repr=False)
    # per layer: whether it attends (and keeps a KV cache); empty: every layer does.  LFM2's
    # short-convolution layers do not: they keep a small fixed state instead
    attention_layers: tuple[bool, ...] = ()
    state_elements: int = 0          # float32 state per sequence that does not grow with the context
    source: str = ""                 # where config.json came from
    raw: dict = field(default_factory=dict, repr=False, compare=False)   # config.json as read

    @cached_property
    def n_params(self) -> int:
        """Parameter count as Hugging Face reports it (tied embeddings counted once)."""
        return sum(t.n_elements for t in self.tensors if t.is_param)

    @property
    def n_embedding_params(self) -> int:
        return sum(t.n_elements for t in self.tensors
                   if t.name in ("token_embd.weight", "position_embd.weight"))

    @cached_property
    def decode_matmul_elements(self) -> int:
        """Weights multiplied per generated token: every quantizable matrix except embedding
        tables read one row at a time (an untied token embedding, GPT-2's positions)."""
        return sum(t.active_elements for t in self.tensors if t.quantizable and not self.gathered_only(t.name))

    @cached_property
    def n_experts(self) -> int:
        """Experts per mixture-of-experts layer (1 for a dense model)."""
        return max((t.experts for t in self.tensors), default=1)

    @cached_property
    def n_active_params(self) -> int:
        """Parameters one token uses: a mixture of experts' top-k experts, every dense weight."""
        return sum(t.active_elements for t in self.tensors if t.is_param)

    def attention_flops(self, position: int) -> float:
        """FLOPs of one token's attention over ``position`` cached tokens (scores and values),
        each layer's window respected."""
        return 4 * self.n_heads * self.head_dim * sum(
            position if w is None else min(position, w) for w in self._attending_windows())

    def prompt_head_positions(self, prompt: int) -> int:
        """Query heads x positions attended, summed over a ``prompt``-token prompt's tokens (each
        attends to itself and those before it, within its layer's window) and the layers."""
        def attended(w: int | None) -> int:
            if w is None or w >= prompt:
                return prompt * (prompt + 1) // 2
            return w * (w + 1) // 2 + (prompt - w) * w
        return self.n_heads * sum(attended(w) for w in self._attending_windows())

    def _attending_windows(self) -> list[int | None]:
        """The window (None: full) of every layer that attends."""
        windows = self.windows or (None,) * self.n_layers
        return [w for i, w in enumerate(windows) if not self.attention_layers or self.attention_layers[i]]

    def gathered_only(self, name: str) -> bool:
        """Embedding tables of which a token reads one row, not the whole table."""
        if name == "position_embd.weight":
            return True
        return name == "token_embd.weight" and not self.tied_embeddings

    @property
    def gqa_ratio(self) -> int:
        return self.n_heads // self.n_kv_heads

    def kv_elements(self, context: int, windowed: bool = True) -> int:
        """K and V elements the cache holds at ``context`` tokens, summed over layers; with
        ``windowed`` (a runtime that trims them) sliding-window layers keep at most their window."""
        per_layer_token = 2 * self.n_kv_heads * self.head_dim
        return sum(per_layer_token * (context if w is None or not windowed else min(context, w))
                   for w in self._attending_windows())
