"""Build a decoder as an ONNX graph of ONNX Runtime's fused contrib ops, weights streamed to disk.

The graph is the one that makes onnxruntime-genai's CPU models fast, built directly from the
checkpoint (no torch trace, no full-size intermediate model):
  Gather | GatherBlockQuantized (embedding; int4 shares the head's blocks when tied)
  per layer: SimplifiedLayerNormalization / SkipSimplifiedLayerNormalization,
             one packed q|k|v MatMul (MatMulNBits for int4 and int8),
             GroupQueryAttention with rotary inside and the KV cache as inputs/outputs,
             o MatMul, gate and up MatMuls, SiLU, down;
  final norm, then the head applied only to the last ``logits_to_keep`` positions (generation
  needs one; verification asks for all), so prefill does not pay for 128 x vocab logits.
Inputs: input_ids [B, S] int64, attention_mask [B, T] int64 (T = past + S), logits_to_keep int64
scalar, past_key_values.{i}.key/value [B, KV, P, D] float32.  Outputs: logits [B, K, V] float32,
present.{i}.key/value [B, KV, T, D].
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from edgellm.errors import BadInput
from edgellm.models.families import Family
from edgellm.exporters.onnx.weights import ExternalData, NBits, quantize_experts, quantize_nbits

MS = "com.microsoft"
QUANTS = ("fp32", "fp16", "int8", "int4")
OPSET = 21
KEEP_ALL = 2 ** 62         # logits_to_keep: every position


class Reader:
    """Checkpoint tensors as float32 numpy arrays, by Hugging Face name."""

    def __init__(self, ckpt):
        self.ckpt = ckpt
        self._names = set(ckpt.names())

    def __call__(self, name: str) -> np.ndarray:
        if name not in self._names:
            raise BadInput(f"the checkpoint has no tensor {name[:200]!r}, which its config.json's model needs")
        return np.asarray(self.ckpt.read(name), dtype=np.float32)

    def has(self, name: str) -> bool:
        return name in self._names


@dataclass
class Graph:
    weights: ExternalData
    quant: str
    block: int
    accuracy_level: int
    int8_levels: int = 127
    # int4 blocks for (weight [N, K], graph name); None: ONNX Runtime's round-to-nearest
    int4_quantizer: Callable[[np.ndarray, str], NBits] | None = None
    nodes: list = field(default_factory=list)
    _n: int = 0
    _consts: set = field(default_factory=set)

    def node(self, op: str, inputs: list[str], n_out: int = 1, domain: str = "", name: str = "", **attrs):
        from onnx import helper

        self._n += 1
        name = f"{name or op}_{self._n}"
        outs = [f"{name}/out{j}" for j in range(n_out)]
        self.nodes.append(helper.make_node(op, inputs, outs, name=name, domain=domain or None, **attrs))
        return outs[0] if n_out == 1 else outs

    def const(self, name: str, value) -> str:
        """A small constant, added once however often it is used."""
        if name not in self._consts:
            self._consts.add(name)
            self.weights.add(name, np.asarray(value))
        return name

    def matmul(self, x: str, w_nk: np.ndarray, name: str, bias: np.ndarray | None = None) -> str:
        """x @ W.T (+ b) for a Hugging Face weight [out, in], in the export's weight type."""
        n, k = w_nk.shape
        if self.quant in ("int4", "int8"):
            # MatMulNBits blocks along the input dimension.  int8 was DynamicQuantizeMatMul (int8
            # columns, activations quantized to uint8 per whole tensor on the fly): on a real model
            # with activation outliers (SmolLM2-135M-Instruct) that one activation scale cost a
            # mean KLD of 0.47; 8-bit blocks with activations quantized per block of 32 measure
            # 0.0043 (benchmarks/RESULTS.md, "ONNX int8 on a real model")
            bits = 4 if self.quant == "int4" else 8
            q = self.nbits(w_nk, name, bits)
            ins = [x, self.weights.add(f"{name}.qweight", q.packed), self.weights.add(f"{name}.scales", q.scales),
                   self.weights.add(f"{name}.zero_points", q.zero_points)]
            if bias is not None:
                ins += ["", self.weights.add(f"{name}.bias", bias.astype(np.float32))]   # g_idx unused
            return self.node("MatMulNBits", ins, domain=MS, name=name, K=k, N=n, bits=bits,
                             block_size=self.block, accuracy_level=self.accuracy_level)
        w = self.weight(f"{name}.weight", np.ascontiguousarray(w_nk.T))
        y = self.node("MatMul", [x, w], name=name)
        if bias is not None:
            y = self.node("Add", [y, self.weights.add(f"{name}.bias", bias.astype(np.float32))])
        return y

    def nbits(self, w_nk: np.ndarray, name: str, bits: int) -> NBits:
        if bits == 4 and self.int4_quantizer is not None:
            return self.int4_quantizer(w_nk, name)
        return quantize_nbits(w_nk, bits, self.block)

    def weight(self, name: str, w: np.ndarray) -> str:
        """A float weight: float32, or stored float16 and widened once at load (fp16 halves the file;
        ONNX Runtime's x86 CPU kernels compute in float32)."""
        if self.quant != "fp16":
            return self.weights.add(name, w.astype(np.float32))
        return self.node("Cast", [self.weights.add(name, w.astype(np.float16))], to=1)


def build(arch: Family, read: Reader, weights: ExternalData, quant: str, block: int = 32,
          accuracy_level: int = 4, context: int | None = None, int8_levels: int = 127,
          progress: Callable[[int, int], None] = lambda i, n: None,
          int4_quantizer: Callable[[np.ndarray, str], NBits] | None = None):
    """The ModelProto (initializers external in ``weights``)."""
    from onnx import TensorProto, helper, numpy_helper

    m = arch.model
    g = Graph(weights, quant, block, accuracy_level, int8_levels, int4_quantizer)
    hidden, heads, kv, hd = m.hidden, m.n_heads, m.n_kv_heads, m.head_dim
    n_layers, vocab = m.n_layers, m.vocab
    eps = arch.eps
    ctx = min(context or m.max_context, m.max_context)

    # attention lengths from the mask: seqlens_k = tokens seen - 1, total = mask length
    mask_sum = g.node("ReduceSum", ["attention_mask", g.const("axes1", np.array([1], np.int64))], keepdims=0)
    seqlens_k = g.node("Cast", [g.node("Sub", [mask_sum, g.const("one_i64", np.array(1, np.int64))])], to=TensorProto.INT32)
    total = g.node("Cast", [g.node("Gather", [g.node("Shape", ["attention_mask"]), g.const("idx1", np.array(1, np.int64))], axis=0)],
                   to=TensorProto.INT32)
    caches = {}                                  # rotary tables by kind ("global", "local")

    def rotary_inputs(i: int) -> list[str]:
        kind = arch.rotary_kind(i)
        if kind not in caches:
            local, suffix = kind == "local", "" if kind == "global" else "_local"
            cos, sin = arch.rotary_caches(ctx, local=local)
            caches[kind] = [weights.add(f"cos_cache{suffix}", cos), weights.add(f"sin_cache{suffix}", sin)]
            switch = None if local else arch.longrope_switch
            if switch is not None and ctx > switch:
                caches[kind] = longrope_tables(caches[kind], *arch.rotary_caches(ctx, local=local, long=True),
                                               switch, suffix)
        return caches[kind]

    def longrope_tables(short: list[str], long_cos, long_sin, switch: int, suffix: str) -> list[str]:
        """Long-rope's tables chosen as transformers chooses them: the long ones for every position
        once the sequence (the attention mask's length) passes ``switch`` tokens."""
        long = [weights.add(f"cos_cache_long{suffix}", long_cos), weights.add(f"sin_cache_long{suffix}", long_sin)]
        past = g.node("Greater", [total, g.const("longrope_switch", np.array(switch, np.int32))])

        def branch(name: str, tables: list[str]):
            outs = [helper.make_tensor_value_info(f"{name}/{k}", TensorProto.FLOAT, None) for k in ("cos", "sin")]
            nodes = [helper.make_node("Identity", [t], [o.name]) for t, o in zip(tables, outs)]
            return helper.make_graph(nodes, name, [], outs)

        return g.node("If", [past], n_out=2, name="longrope_tables",
                      then_branch=branch("long_tables", long), else_branch=branch("short_tables", short))

    def norm_w(name: str) -> str:
        return weights.add(name, read(name) + np.float32(arch.norm_offset))

    def norm_ins(name: str) -> list[str]:
        """Scale (and, for LayerNorm families such as GPT-2, bias) of a norm weight ``name``."""
        if not arch.layer_norm:
            return [norm_w(name)]
        return [norm_w(name), weights.add(name.removesuffix(".weight") + ".bias",
                                          read(name.removesuffix(".weight") + ".bias"))]

    def norm(x: str, name: str) -> str:
        if arch.layer_norm:
            return g.node("LayerNormalization", [x, *norm_ins(name)], axis=-1, epsilon=eps)
        return g.node("SimplifiedLayerNormalization", [x, *norm_ins(name)], axis=-1, epsilon=eps)

    def skip_norm(branch: str, residual: str, name: str) -> tuple[str, str]:
        """(normed, new residual) of residual + branch: one fused op."""
        op = "SkipLayerNormalization" if arch.layer_norm else "SkipSimplifiedLayerNormalization"
        h, _, _, total_ = g.node(op, [branch, residual, *norm_ins(name)], n_out=4, domain=MS, epsilon=eps)
        return h, total_

    def bias(name: str):
        return read(name + ".bias") if read.has(name + ".bias") else None

    # embedding: int4/int8 blocks read by GatherBlockQuantized (a tied head multiplies the same
    # blocks), float weights by Gather
    tied = m.tied_embeddings or not read.has(arch.head)
    emb = read(arch.embed)
    steps, step = n_layers + 2, 0
    head_q = None
    if quant in ("int4", "int8"):
        bits = 4 if quant == "int4" else 8
        q = g.nbits(emb, "lm_head" if tied else "embed", bits)
        qw = weights.add("embed.qweight", q.packed)
        qs, qz = weights.add("embed.scales", q.scales), weights.add("embed.zero_points", q.zero_points)
        flat = g.node("Reshape", [qw, g.const("embed_flat_shape", np.array([vocab, -1], np.int64))])
        x = g.node("GatherBlockQuantized", [flat, "input_ids", qs, qz], domain=MS, bits=bits, block_size=block,
                   gather_axis=0, quantize_axis=1)
        if q.packed.shape[1] * block != hidden:
            x = g.node("Slice", [x, g.const("zero", np.array([0], np.int64)), g.const("hid", np.array([hidden], np.int64)),
                                 g.const("axis_last", np.array([-1], np.int64))])
        if tied:
            head_q = (qw, qs, qz, bits)
    else:
        x = g.node("Gather", [g.weight("embed.weight", emb), "input_ids"], axis=0)
    if arch.position_embed is not None:              # GPT-2's learned positions: the last S of
        axis1 = g.const("axis1", np.array([1], np.int64))      # cumsum(attention_mask) - 1
        seq = g.node("Slice", [g.node("Shape", ["input_ids"]), axis1, g.const("two", np.array([2], np.int64))])
        ones = g.const("ones_1d", np.array([1], np.int64))
        pos = g.node("Sub", [g.node("CumSum", ["attention_mask", g.const("axis1_scalar", np.array(1, np.int64))]), ones])
        pos = g.node("Slice", [pos, g.node("Neg", [seq]), g.const("int_max", np.array([2**62], np.int64)), axis1])
        x = g.node("Add", [x, g.node("Gather", [g.weight("position_embed.weight", read(arch.position_embed)), pos], axis=0)])
    head_w = emb if tied and head_q is None else None
    del emb
    if arch.embed_scale is not None:
        x = g.node("Mul", [x, g.const("embed_scale", np.array(arch.embed_scale, np.float32))])
    step += 1
    progress(step, steps)

    residual, pending = x, None
    inputs, outputs = [], []

    def post(branch: str, weight: str | None) -> str:
        """Gemma 2/3 normalise each branch before it joins the residual."""
        if weight is None:
            return branch
        return norm(branch, weight)

    def scaled(branch: str) -> str:
        """A residual branch times the family's residual multiplier (Granite), if it has one."""
        if arch.residual_scale is None:
            return branch
        return g.node("Mul", [branch, g.const("residual_scale", np.array(arch.residual_scale, np.float32))])

    for i in range(n_layers):
        names = arch.hf_layer(i)
        if pending is None:
            h = norm(residual, names["attn_norm"])
        else:
            h, residual = skip_norm(pending, residual, names["attn_norm"])
        w_qkv, b_qkv = arch.qkv(read, i)
        qkv = g.matmul(h, w_qkv, f"layers.{i}.attn.qkv", b_qkv)
        if arch.qk_norm:
            q, k, v = g.node("Split", [qkv, g.const("split_qkv", np.array([heads * hd, kv * hd, kv * hd], np.int64))],
                             n_out=3, axis=-1)
            q = _head_norm(g, q, heads, hd, norm_w(names["q_norm"]), eps)
            k = _head_norm(g, k, kv, hd, norm_w(names["k_norm"]), eps)
        else:
            q, k, v = qkv, "", ""
        past_k, past_v = f"past_key_values.{i}.key", f"past_key_values.{i}.value"
        pres_k, pres_v = f"present.{i}.key", f"present.{i}.value"
        rotary = arch.rotary_layer(i)                # SmolLM3's NoPE layers attend without positions
        extra = {"softcap": arch.attn_softcap} if arch.attn_softcap else {}
        attn = g.node("GroupQueryAttention", [q, k, v, past_k, past_v, seqlens_k, total]
                      + (rotary_inputs(i) if rotary else []), n_out=3,
                      domain=MS, num_heads=heads, kv_num_heads=kv, scale=arch.attention_scale, do_rotary=int(rotary),
                      rotary_interleaved=0, local_window_size=arch.layer_window(i), **extra)
        g.nodes[-1].output[1:] = [pres_k, pres_v]
        cache_shape = ["batch", kv, "past_sequence_length", hd]
        inputs += [helper.make_tensor_value_info(n, TensorProto.FLOAT, cache_shape) for n in (past_k, past_v)]
        outputs += [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", kv, "total_sequence_length", hd])
                    for n in (pres_k, pres_v)]
        o = scaled(post(g.matmul(attn[0], arch.linear(read, names["o"]), f"layers.{i}.attn.o", bias(names["o"])),
                        names.get("post_attn_norm")))
        h, residual = skip_norm(o, residual, names["mlp_norm"])
        if m.n_experts > 1:
            pending = scaled(_experts(g, arch, read, i, h, hidden))
            step += 1
            progress(step, steps)
            continue
        w_gate, w_up = arch.gate_up(read, i)
        up = g.matmul(h, w_up, f"layers.{i}.mlp.up", bias(names["up"]))
        if w_gate is None:                           # GPT-2: act(up), no gate
            act, up = up, None
            gate = act
        else:
            gate = g.matmul(h, w_gate, f"layers.{i}.mlp.gate")
        if arch.activation == "silu":
            act = g.node("Mul", [gate, g.node("Sigmoid", [gate])])
        else:
            act = g.node("FastGelu", [gate], domain=MS)
        inner = act if up is None else g.node("Mul", [act, up])
        pending = scaled(post(g.matmul(inner, arch.linear(read, names["down"]), f"layers.{i}.mlp.down", bias(names["down"])),
                              names.get("post_mlp_norm")))
        step += 1
        progress(step, steps)

    h, _ = skip_norm(pending, residual, arch.final_norm)
    # the head on the last logits_to_keep positions only
    neg_keep = g.node("Neg", [g.node("Reshape", ["logits_to_keep", g.const("shape1", np.array([1], np.int64))])])
    h = g.node("Slice", [h, neg_keep, g.const("int_max", np.array([KEEP_ALL], np.int64)), g.const("axis1", np.array([1], np.int64))])
    if head_q is not None:
        qw, qs, qz, bits = head_q
        g.node("MatMulNBits", [h, qw, qs, qz], domain=MS, name="lm_head", K=hidden, N=vocab, bits=bits,
                        block_size=block, accuracy_level=accuracy_level)
    else:
        g.matmul(h, head_w if head_w is not None else read(arch.head), "lm_head")
    del head_w
    if arch.logit_scale:                              # Granite divides its logits
        g.node("Mul", [g.nodes[-1].output[0], g.const("logit_scale", np.array(1.0 / arch.logit_scale, np.float32))])
    if arch.final_softcap:                            # Gemma 2: cap * tanh(logits / cap)
        cap = g.const("final_softcap", np.array(arch.final_softcap, np.float32))
        g.node("Mul", [g.node("Tanh", [g.node("Div", [g.nodes[-1].output[0], cap])]), cap])
    g.nodes[-1].output[0] = "logits"                  # the head's output is the graph's
    step += 1
    progress(step, steps)

    inputs = [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "sequence_length"]),
              helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "total_sequence_length"]),
              helper.make_tensor_value_info("logits_to_keep", TensorProto.INT64, [])] + inputs
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "kept", vocab])] + outputs
    # logits_to_keep has a default (every position), so runtimes that do not feed it, such as
    # onnxruntime-genai, get the full [batch, sequence, vocab] logits they allocate for; edgellm's
    # runtime feeds 1 and pays for the head on the last position only
    keep_all = numpy_helper.from_array(np.array(KEEP_ALL, np.int64), "logits_to_keep")
    graph = helper.make_graph(g.nodes, "edgellm", inputs, outputs, initializer=weights.initializers + [keep_all])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid(MS, 1)],
                              producer_name="edgellm")
    model.ir_version = 10
    return model


def _experts(g: Graph, arch: Family, read: Reader, i: int, h: str, hidden: int) -> str:
    """Layer ``i``'s mixture of experts on ``h`` [B, S, hidden]: the router's float32 MatMul, then
    ONNX Runtime's ``MoE`` operator (softmax, top-k, renormalized or not as the family routes,
    each expert's silu(gate) * up and down) over the tokens flattened to [B * S, hidden]."""
    router, fc1, fc2 = arch.moe(read, i)
    flat = g.node("Reshape", [h, g.const("tokens_hidden", np.array([-1, hidden], np.int64))])
    logits = g.node("MatMul", [flat, g.weights.add(f"layers.{i}.moe.router", np.ascontiguousarray(router.T))])
    attrs = dict(domain=MS, name=f"layers.{i}.moe", k=arch.n_used, activation_type="swiglu", swiglu_fusion=1,
                 normalize_routing_weights=int(arch.renormalizes))
    if g.quant in ("int4", "int8"):          # QMoE: 8 bits a scale per row, 4 bits per block of the row
        bits = 4 if g.quant == "int4" else 8
        block = g.block if bits == 4 else None
        ins = [flat, logits]
        for name, w in (("fc1", fc1), ("fc2", fc2)):
            q, scales = quantize_experts(w, bits, block)
            ins += [g.weights.add(f"layers.{i}.moe.{name}.qweight", q),
                    g.weights.add(f"layers.{i}.moe.{name}.scales", scales), ""]
        y = g.node("QMoE", ins, expert_weight_bits=bits, **({"block_size": block} if block else {}), **attrs)
    else:
        y = g.node("MoE", [flat, logits, g.weight(f"layers.{i}.moe.fc1", fc1), "", g.weight(f"layers.{i}.moe.fc2", fc2)],
                   **attrs)
    return g.node("Reshape", [y, g.node("Shape", [h])])


def _head_norm(g: Graph, x: str, n: int, d: int, w: str, eps: float) -> str:
    """RMSNorm over each head's vector (Qwen3's q_norm / k_norm)."""
    shaped = g.node("Reshape", [x, g.const(f"heads_{n}x{d}", np.array([0, 0, n, d], np.int64))])
    normed = g.node("SimplifiedLayerNormalization", [shaped, w], axis=-1, epsilon=eps)
    return g.node("Reshape", [normed, g.const(f"flat_{n * d}", np.array([0, 0, n * d], np.int64))])
