"""A fixed-shape decoder of standard ONNX ops, for NPUs (the QNN HTP) that compile a graph ahead of
time and run only static shapes and quantized (QDQ) tensors.

One step processes ``seq`` tokens against a cache of ``ctx - seq`` past positions:
  inputs   input_ids [1, S] int32, position_ids [1, S] int32,
           attention_bias [1, 1, S, ctx] float32 (0 where a token may attend, -100 where not:
           finite, so 16-bit activation quantization keeps the scores' precision),
           past_key_values.{i}.key/value [1, KV, ctx - S, D] float32
  outputs  logits [1, S, vocab], present.{i}.key/value [1, KV, S, D] (this step's keys and values;
           the application writes them into its cache)
Rotary embedding, RMSNorm, grouped-query attention and the gated MLP are spelled out in MatMul,
Mul, Add, Softmax, Gather, Reshape, Transpose, Concat, Slice, ... — operators the QNN execution
provider maps to HTP ops.  Weights float32 here; ``onnx_qdq`` quantizes the model (static QDQ,
activations calibrated on sample text).
"""

from __future__ import annotations

import numpy as np

from edgellm.models.families import Family
from edgellm.exporters.onnx.graph import Reader

MASKED = -100.0
OPSET = 21


class _G:
    def __init__(self):
        self.nodes, self.inits, self._n, self._consts = [], [], 0, set()

    def node(self, op: str, inputs: list[str], n_out: int = 1, **attrs):
        from onnx import helper

        self._n += 1
        name = f"{op}_{self._n}"
        outs = [f"{name}/out{j}" for j in range(n_out)]
        self.nodes.append(helper.make_node(op, inputs, outs, name=name, **attrs))
        return outs[0] if n_out == 1 else outs

    def init(self, name: str, value: np.ndarray) -> str:
        from onnx import numpy_helper

        if name not in self._consts:
            self._consts.add(name)
            self.inits.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def i64(self, *values: int) -> str:
        return self.init("i64_" + "_".join(map(str, values)).replace("-", "m"), np.array(values, np.int64))

    def f32(self, value: float) -> str:
        return self.init(f"f32_{value!r}", np.array(value, np.float32))


def _rms(g: _G, x: str, w: np.ndarray, name: str, eps: float) -> str:
    """RMSNorm as Div by the root mean square: the QNN HTP simulator's 16-bit Reciprocal measured
    wrong by the full output range, Div exact to quantization."""
    ms = g.node("ReduceMean", [g.node("Mul", [x, x]), g.i64(-1)], keepdims=1)
    normed = g.node("Div", [x, g.node("Sqrt", [g.node("Add", [ms, g.f32(eps)])])])
    return g.node("Mul", [normed, g.init(name, w.astype(np.float32))])


def _rotary(g: _G, x: str, cos: str, sin: str, half: int) -> str:
    """x [1, N, S, D] rotated by non-interleaved rotary (cos/sin [1, 1, S, D])."""
    x1 = g.node("Slice", [x, g.i64(0), g.i64(half), g.i64(3)])
    x2 = g.node("Slice", [x, g.i64(half), g.i64(2 * half), g.i64(3)])
    rotated = g.node("Concat", [g.node("Neg", [x2]), x1], axis=3)
    return g.node("Add", [g.node("Mul", [x, cos]), g.node("Mul", [rotated, sin])])


def build_static(arch: Family, read: Reader, seq: int, ctx: int):
    from onnx import TensorProto, helper

    m = arch.model
    if arch.activation != "silu" or arch.qk_norm or arch.sliding_window != -1:
        from edgellm.errors import BadInput
        raise BadInput(f"{m.name}: the static NPU graph covers llama-style models (llama, mistral without "
                       "sliding window, qwen2, phi3); not this one yet")
    if not 0 < seq < ctx:
        from edgellm.errors import BadInput
        raise BadInput(f"static shapes need 0 < sequence ({seq}) < context ({ctx})")
    g = _G()
    H, KV, D = m.n_heads, m.n_kv_heads, m.head_dim
    past = ctx - seq
    cos, sin = arch.rotary_caches(ctx)
    full_cos, full_sin = np.concatenate([cos, cos], -1), np.concatenate([sin, sin], -1)
    c = g.node("Unsqueeze", [g.node("Gather", [g.init("cos_table", full_cos), "position_ids"], axis=0), g.i64(1)])
    s = g.node("Unsqueeze", [g.node("Gather", [g.init("sin_table", full_sin), "position_ids"], axis=0), g.i64(1)])
    emb = read(arch.embed)
    x = g.node("Gather", [g.init("embed", emb), "input_ids"], axis=0)
    if arch.embed_scale is not None:
        x = g.node("Mul", [x, g.f32(arch.embed_scale)])
    head = emb if (m.tied_embeddings or not read.has(arch.head)) else read(arch.head)
    del emb
    inputs = [helper.make_tensor_value_info("input_ids", TensorProto.INT32, [1, seq]),
              helper.make_tensor_value_info("position_ids", TensorProto.INT32, [1, seq]),
              helper.make_tensor_value_info("attention_bias", TensorProto.FLOAT, [1, 1, seq, ctx])]
    outputs = []
    for i in range(m.n_layers):
        names = arch.hf_layer(i)
        h = _rms(g, x, read(names["attn_norm"]) + np.float32(arch.norm_offset), f"l{i}.attn_norm", arch.eps)
        w, b = arch.qkv(read, i)
        qkv = g.node("MatMul", [h, g.init(f"l{i}.qkv", np.ascontiguousarray(w.T))])
        if b is not None:
            qkv = g.node("Add", [qkv, g.init(f"l{i}.qkv_bias", b)])
        q, k, v = g.node("Split", [qkv, g.i64(H * D, KV * D, KV * D)], n_out=3, axis=-1)

        def heads(t, n):
            return g.node("Transpose", [g.node("Reshape", [t, g.i64(1, seq, n, D)])], perm=[0, 2, 1, 3])
        q, k, v = _rotary(g, heads(q, H), c, s, D // 2), _rotary(g, heads(k, KV), c, s, D // 2), heads(v, KV)
        pk, pv = f"past_key_values.{i}.key", f"past_key_values.{i}.value"
        inputs += [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, KV, past, D]) for n in (pk, pv)]
        g.nodes.append(helper.make_node("Identity", [k], [f"present.{i}.key"]))
        g.nodes.append(helper.make_node("Identity", [v], [f"present.{i}.value"]))
        outputs += [helper.make_tensor_value_info(f"present.{i}.{n}", TensorProto.FLOAT, [1, KV, seq, D])
                    for n in ("key", "value")]
        k_all = g.node("Concat", [pk, k], axis=2)
        v_all = g.node("Concat", [pv, v], axis=2)
        if H != KV:                                   # each cache head serves H / KV query heads
            def repeat(t):
                t5 = g.node("Unsqueeze", [t, g.i64(2)])
                return g.node("Reshape", [g.node("Expand", [t5, g.i64(1, KV, H // KV, ctx, D)]), g.i64(1, H, ctx, D)])
            k_all, v_all = repeat(k_all), repeat(v_all)
        scores = g.node("MatMul", [g.node("Mul", [q, g.f32(arch.attention_scale)]),
                                   g.node("Transpose", [k_all], perm=[0, 1, 3, 2])])
        probs = g.node("Softmax", [g.node("Add", [scores, "attention_bias"])], axis=-1)
        attn = g.node("Reshape", [g.node("Transpose", [g.node("MatMul", [probs, v_all])], perm=[0, 2, 1, 3]),
                                  g.i64(1, seq, H * D)])
        x = g.node("Add", [x, g.node("MatMul", [attn, g.init(f"l{i}.o", np.ascontiguousarray(read(names["o"] + ".weight").T))])])
        h = _rms(g, x, read(names["mlp_norm"]) + np.float32(arch.norm_offset), f"l{i}.mlp_norm", arch.eps)
        wg, wu = arch.gate_up(read, i)
        gate = g.node("MatMul", [h, g.init(f"l{i}.gate", np.ascontiguousarray(wg.T))])
        up = g.node("MatMul", [h, g.init(f"l{i}.up", np.ascontiguousarray(wu.T))])
        act = g.node("Mul", [g.node("Mul", [gate, g.node("Sigmoid", [gate])]), up])
        x = g.node("Add", [x, g.node("MatMul", [act, g.init(f"l{i}.down", np.ascontiguousarray(read(names["down"] + ".weight").T))])])
    h = _rms(g, x, read(arch.final_norm) + np.float32(arch.norm_offset), "final_norm", arch.eps)
    g.nodes.append(helper.make_node("MatMul", [h, g.init("lm_head", np.ascontiguousarray(head.T))], ["logits"]))
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, seq, m.vocab])] + outputs
    graph = helper.make_graph(g.nodes, "edgellm-static", inputs, outputs, initializer=g.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="edgellm")
    model.ir_version = 10
    return model

