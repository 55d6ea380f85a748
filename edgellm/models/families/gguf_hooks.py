"""What a family's GGUF file needs: the hyperparameter keys llama.cpp reads for it, tensor names
from the ``gguf`` package's tables (``TensorNameMap``), and the tensors whose layout differs from
Hugging Face's.  The writer (exporters/gguf/write.py) calls these; ``gguf`` is imported only here,
only when a file is written, so the planner stays light."""

from __future__ import annotations

from functools import cached_property
from typing import ClassVar, Iterator

import numpy as np

from edgellm.errors import BadInput


class GgufHooks:
    gguf_arch: ClassVar[str] = "llama"          # gguf.MODEL_ARCH member name, lower case
    # Hugging Face tensors that are buffers or duplicates, never written
    skip_suffixes: ClassVar[tuple[str, ...]] = ("rotary_emb.inv_freq",)
    # llama.cpp's llama layout interleaves rotary q/k halves that Hugging Face stores apart
    permute_rotary: ClassVar[bool] = False
    always_tied: ClassVar[bool] = False         # the head is the embedding whatever the config says
    norm_offset: ClassVar[float] = 0.0          # Gemma's RMSNorm multiplies by (1 + w): files add it
    explicit_head_dims: ClassVar[bool] = False  # write key/value lengths even when hidden / heads
    rotary: ClassVar[bool] = True               # GPT-2 has learned positions: no KV-head or rope keys
    # rope_scaling kinds the GGUF metadata (and tensors) express; anything else is refused at
    # export, never dropped (shape.py build_problem)
    gguf_rope_kinds: ClassVar[tuple] = (None, "default", "linear")
    # llama.cpp's graph for the architecture turns only rope.dimension_count of each head
    gguf_partial_rotary: ClassVar[bool] = False

    @cached_property
    def gguf_arch_enum(self):
        import gguf
        return getattr(gguf.MODEL_ARCH, self.gguf_arch.upper())

    @cached_property
    def gguf_arch_name(self) -> str:
        import gguf
        return gguf.MODEL_ARCH_NAMES[self.gguf_arch_enum]

    @cached_property
    def names(self):
        import gguf
        return gguf.get_tensor_name_map(self.gguf_arch_enum, self.model.n_layers)

    # -- metadata -----------------------------------------------------------------------------
    def add_metadata(self, w) -> None:
        m, c = self.model, self.cfg
        w.add_context_length(m.max_context)
        w.add_embedding_length(m.hidden)
        w.add_block_count(m.n_layers)
        w.add_feed_forward_length(self.gguf_feed_forward_length)
        w.add_head_count(m.n_heads)
        if self.rotary:
            w.add_head_count_kv(self.gguf_head_count_kv)
        w.add_vocab_size(m.vocab)
        self.add_norm_eps(w)
        if not self.rotary:
            return
        w.add_rope_freq_base(float(c.get("rope_theta", 10000.0)))
        w.add_rope_dimension_count(self.rotary_dim)
        rope = c.get("rope_scaling") or {}
        if rope.get("rope_type", rope.get("type")) == "linear":
            import gguf
            w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
            w.add_rope_scaling_factor(float(rope["factor"]))
        if m.head_dim != m.hidden // m.n_heads or self.explicit_head_dims:
            w.add_key_length(m.head_dim)
            w.add_value_length(m.head_dim)

    @property
    def gguf_head_count_kv(self) -> int | list[int]:
        """KV heads, or one count per layer where some layers do not attend (0 there: LFM2)."""
        return self.model.n_kv_heads

    @property
    def gguf_feed_forward_length(self) -> int:
        return self.model.ffn

    def add_norm_eps(self, w) -> None:
        w.add_layer_norm_rms_eps(self.norm_eps)

    @property
    def norm_eps(self) -> float:
        return float(self.cfg.get("rms_norm_eps", 1e-6))

    def general_name(self, name: str, tokens: list[str]) -> str | None:
        """``general.name`` for the file, or None to leave it out."""
        return name

    # -- tensors ------------------------------------------------------------------------------
    def gguf_name(self, hf_name: str) -> str | None:
        """The GGUF name of a checkpoint tensor; None when it is not written."""
        if hf_name.endswith(self.skip_suffixes):
            return None
        if hf_name == "lm_head.weight" and (self.model.tied_embeddings or self.always_tied):
            return None
        name = self.names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise BadInput(f"{self.model.name}: checkpoint tensor {hf_name!r} has no GGUF name for "
                           f"{self.gguf_arch_name}; is the checkpoint complete and of this architecture?")
        return name

    def expert_of(self, hf_name: str) -> tuple[str, int] | None:
        """(the stacked tensor's Hugging Face name, expert index) of one expert's tensor of a
        mixture of experts; None for every other tensor."""
        return None

    def needs_transform(self, hf_name: str, gguf_name: str) -> bool:
        if self.permute_rotary and gguf_name.endswith(("attn_q.weight", "attn_k.weight")):
            return True
        return bool(self.norm_offset) and hf_name.endswith("norm.weight")

    def transform(self, hf_name: str, gguf_name: str, data: np.ndarray) -> np.ndarray | None:
        """The tensor as llama.cpp lays it out; None when it needs no change (then it may be
        streamed in row chunks instead of read whole)."""
        if self.permute_rotary and gguf_name.endswith("attn_q.weight"):
            return permute_rotary(data, self.model.n_heads)
        if self.permute_rotary and gguf_name.endswith("attn_k.weight"):
            return permute_rotary(data, self.model.n_kv_heads)
        if self.norm_offset and hf_name.endswith("norm.weight"):
            return data + self.norm_offset
        return None

    def extra_tensors(self) -> Iterator[tuple[str, np.ndarray]]:
        """Tables the converter adds that the checkpoint does not hold (rope factors)."""
        return iter(())


def permute_rotary(w: np.ndarray, n_head: int) -> np.ndarray:
    """Hugging Face stores rotary q/k halves apart; llama.cpp's llama layout interleaves them
    (convert_hf_to_gguf.py LlamaModel.permute)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)
