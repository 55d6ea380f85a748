"""Mixture-of-experts families: Qwen3-MoE (Qwen3-30B-A3B, Qwen3-Coder-30B-A3B), Mixtral and OLMoE.

Each layer's MLP is ``experts`` gated MLPs and a router that sends every token to ``used`` of them
(softmax over the router's logits, top-k).  In GGUF the experts of a layer are one tensor each of
gate, up and down, stacked along a third dimension (``blk.N.ffn_gate_exps``, as llama.cpp's
converter merges them); Hugging Face checkpoints (and transformers 5's save) hold one tensor per
expert, which the writer stacks expert by expert without holding the layer.  The router
(``ffn_gate_inp``) stays float32 and is never quantized.

What a token costs differs from what the file holds: memory holds every expert, a decoded token
multiplies only its ``used`` experts (``TensorSpec.active_elements``), so the planner prices decode
by the active weights.

ONNX (Qwen3-MoE and Mixtral): each MLP is one node of ONNX Runtime's ``MoE`` operator (``QMoE``
for int8 and int4), which computes exactly these routers (softmax over the router's logits, top-k,
renormalized weights, ``down(silu(gate) * up)`` per expert; benchmarks/RESULTS.md) with every
expert's gate and up rows interleaved (``swiglu_fusion=1``; its CPU kernel refuses a separate
gate).  OLMoE in ONNX (its q/k norms span the whole projection, not one head), the NPU graph,
calibration and distillation do not take these families yet; each refuses in one line before any
work.
"""

from __future__ import annotations

import re
from typing import ClassVar

from edgellm.errors import BadInput
from edgellm.models.families.base import Family
from edgellm.models.families.registry import register
from edgellm.models.tensors import TensorSpec

_EXPERT = re.compile(r"^(model\.layers\.\d+\.(?:mlp|block_sparse_moe)\.experts\.)(\d+)\.(.+)$")
_FUSED = re.compile(r"^(model\.layers\.\d+\.)mlp\.(experts\.gate_up_proj|experts\.down_proj|gate\.weight)$")


class MoE(Family):
    """A llama-style decoder whose every MLP is a mixture of gated experts."""
    supports = frozenset({"gguf", "onnx"})
    k_experts: ClassVar[tuple[str, ...]] = ("num_experts", "num_local_experts")
    k_expert_ffn: ClassVar[str] = "intermediate_size"
    # llama.cpp's graph renormalizes the top-k weights (Qwen3-MoE, Mixtral) or not (OLMoE): a
    # config that asks the other way would run as a different model, so it is refused
    renormalizes: ClassVar[bool] = True

    # -- shape --------------------------------------------------------------------------------
    @property
    def n_experts(self) -> int:
        given = {k: self.cfg[k] for k in self.k_experts if self.cfg.get(k) is not None}
        if len(set(map(repr, given.values()))) > 1:         # transformers reads one, edgellm the other
            raise BadInput(f"{self.name}: config.json: {' and '.join(f'{k}={v!r}' for k, v in given.items())} "
                           "disagree; which is the model's expert count?")
        for k in self.k_experts:
            if isinstance(self.cfg.get(k), int) and not isinstance(self.cfg.get(k), bool):
                return self.need(k)
        raise BadInput(f"{self.name}: config.json: '{self.k_experts[0]}' must be a positive integer "
                       f"for {self.cfg.get('model_type')} models")

    @property
    def n_used(self) -> int:
        used = self.need("num_experts_per_tok")
        if used > self.n_experts:
            raise BadInput(f"{self.name}: config.json: num_experts_per_tok ({used}) exceeds the "
                           f"{self.n_experts} experts")
        return used

    def ffn_size(self, hidden: int) -> int:
        return self.need(self.k_expert_ffn)

    def build(self):
        norm = self.cfg.get("norm_topk_prob", self.renormalizes)
        if bool(norm) != self.renormalizes:
            raise BadInput(f"{self.name}: config.json: norm_topk_prob={norm!r}, but llama.cpp's "
                           f"{self.gguf_arch} graph {'always' if self.renormalizes else 'never'} renormalizes "
                           "the chosen experts' weights; the file would be a different model")
        return super().build()

    def layer_tensors(self, p, hidden, q, kv, head_dim, ffn) -> list[TensorSpec]:
        dense = super().layer_tensors(p, hidden, q, kv, head_dim, ffn)
        n, k = self.n_experts, self.n_used
        t = [x for x in dense if not x.name.startswith((p + "ffn_gate", p + "ffn_up", p + "ffn_down"))]
        at = next(i for i, x in enumerate(t) if x.name == p + "ffn_norm.weight") + 1
        t[at:at] = [TensorSpec(p + "ffn_gate_inp.weight", hidden, n),
                    TensorSpec(p + "ffn_gate_exps.weight", hidden, ffn, experts=n, used=k),
                    TensorSpec(p + "ffn_up_exps.weight", hidden, ffn, experts=n, used=k),
                    TensorSpec(p + "ffn_down_exps.weight", ffn, hidden, experts=n, used=k)]
        return t

    # -- calibration (GGUF) ------------------------------------------------------------------------
    def calibration_problem(self, fmt=None) -> str | None:
        if fmt is not None and not fmt.calibrates_experts:
            return (f"{self.name}: --calibrate does not support {fmt.format.upper()} builds of mixture-of-experts models "
                    f"({self.cfg.get('model_type')}) yet: their experts are rounded to nearest; "
                    "calibrate a GGUF build, or export without --calibrate")
        return None

    def checkpoint_parts(self, name: str) -> list[tuple[str, ...]] | None:
        """transformers 5 fuses a layer's experts into ``mlp.experts.gate_up_proj`` [experts,
        2 x ffn, hidden] (each expert's gate rows, then its up rows) and ``mlp.experts.down_proj``
        [experts, hidden, ffn], and names the router ``mlp.gate``; checkpoints keep one tensor per
        expert and part, under the family's block name (Mixtral: ``block_sparse_moe``, w1/w3/w2)."""
        m = _FUSED.match(name)
        if m is None:
            return None
        p = f"{m.group(1)}{self.moe_block}."
        if m.group(2) == "gate.weight":
            return None if self.moe_block == "mlp" else [(p + "gate.weight",)]
        gate, up, down = self.expert_parts
        parts = (gate, up) if m.group(2) == "experts.gate_up_proj" else (down,)
        return [tuple(f"{p}experts.{e}.{part}.weight" for part in parts) for e in range(self.n_experts)]

    # -- ONNX (ONNX Runtime's MoE operator) -----------------------------------------------------
    moe_block: ClassVar[str] = "mlp"                                   # the layer's MLP module
    expert_parts: ClassVar[tuple[str, str, str]] = ("gate_proj", "up_proj", "down_proj")

    def moe(self, read, i: int):
        """(router [experts, hidden], fc1 [experts, 2 x ffn, hidden] with each expert's gate and up
        rows interleaved, fc2 [experts, hidden, ffn]) of layer ``i``, as ONNX Runtime's ``MoE``
        operator takes them (float32).  A tensor of another shape is refused."""
        import numpy as np

        p = f"model.layers.{i}.{self.moe_block}."
        n, hidden, ffn = self.n_experts, self.model.hidden, self.ffn_size(self.model.hidden)
        gate, up, down = self.expert_parts

        def tensor(name: str, shape: tuple[int, int]):
            w = read(name)
            if w.shape != shape:
                raise BadInput(f"{self.name}: {name} has shape {list(w.shape)}; config.json implies {list(shape)}")
            return w
        router = tensor(p + "gate.weight", (n, hidden))
        fc1 = np.empty((n, 2 * ffn, hidden), np.float32)
        fc2 = np.empty((n, hidden, ffn), np.float32)
        for e in range(n):
            fc1[e, 0::2] = tensor(f"{p}experts.{e}.{gate}.weight", (ffn, hidden))
            fc1[e, 1::2] = tensor(f"{p}experts.{e}.{up}.weight", (ffn, hidden))
            fc2[e] = tensor(f"{p}experts.{e}.{down}.weight", (hidden, ffn))
        return router, fc1, fc2

    # -- GGUF -----------------------------------------------------------------------------------
    def expert_of(self, hf_name: str) -> tuple[str, int] | None:
        """(the layer's stacked Hugging Face name, expert index) of one expert's tensor."""
        m = _EXPERT.match(hf_name)
        return (m.group(1) + m.group(3), int(m.group(2))) if m else None

    def gguf_name(self, hf_name: str) -> str | None:
        e = self.expert_of(hf_name)
        return super().gguf_name(e[0] if e else hf_name)

    def add_metadata(self, w) -> None:
        super().add_metadata(w)
        w.add_expert_count(self.n_experts)
        w.add_expert_used_count(self.n_used)


@register
class Qwen3Moe(MoE):
    """Qwen3-30B-A3B and Qwen3-Coder-30B-A3B: Qwen3's q/k norms, 128 experts of which 8 per token."""
    model_types = ("qwen3_moe",)
    gguf_arch = "qwen3moe"
    qk_norm = True
    explicit_head_dims = True
    k_expert_ffn = "moe_intermediate_size"

    @property
    def gguf_feed_forward_length(self) -> int:
        """The dense MLP size the config names (llama.cpp's converter writes it; the experts' own
        size goes in expert_feed_forward_length)."""
        return int(self.cfg.get("intermediate_size") or self.model.ffn)

    def build(self):
        step, dense = self.cfg.get("decoder_sparse_step", 1), self.cfg.get("mlp_only_layers") or []
        if step != 1 or dense:
            raise BadInput(f"{self.name}: config.json: dense MLP layers among the experts (decoder_sparse_step "
                           f"{step!r}, mlp_only_layers {str(dense)[:40]}) are not supported yet")
        return super().build()

    def add_metadata(self, w) -> None:
        super().add_metadata(w)
        w.add_expert_feed_forward_length(self.ffn_size(0))


@register
class Mixtral(MoE):
    """Mixtral 8x7B and its kind: llama's layout (llama.cpp runs it as llama) with 8 experts."""
    model_types = ("mixtral",)
    gguf_arch = "llama"
    permute_rotary = True
    moe_block = "block_sparse_moe"
    expert_parts = ("w1", "w3", "w2")


@register
class Olmoe(MoE):
    """OLMoE: q/k norms over the whole projection (not per head); the top-k weights are not renormalized."""
    model_types = ("olmoe",)
    gguf_arch = "olmoe"
    renormalizes = False
    supports = frozenset({"gguf"})          # ONNX: the graph's q/k norms are per head, OLMoE's span the projection

    def format_problem(self, fmt) -> str | None:
        if fmt.fixed_architectures and self.model.tied_embeddings:
            return (f"{self.name}: llama.cpp's olmoe graph needs its own output matrix; a tied head "
                    "(tie_word_embeddings) is not supported")
        return None

    def layer_tensors(self, p, hidden, q, kv, head_dim, ffn) -> list[TensorSpec]:
        t = super().layer_tensors(p, hidden, q, kv, head_dim, ffn)
        at = next(i for i, x in enumerate(t) if x.name == p + "attn_output.weight")
        t[at:at] = [TensorSpec(p + "attn_q_norm.weight", q), TensorSpec(p + "attn_k_norm.weight", kv)]
        return t
