"""Random-weight ONNX probes for measuring ONNX Runtime's matrix kernels on the device
(``edgellm device measure``), where the ``onnx`` package is not installed (it belongs to the
export toolchain): the protobuf is written by hand, with numpy and the standard library.

A probe is a stack of decoder layers as edgellm's ONNX graph computes them (exporters/onnx/graph.py):
(Skip)SimplifiedLayerNormalization, one packed q/k/v projection, GroupQueryAttention with its
rotary embedding over a float32 cache, the output projection and the gated MLP, every matrix in one
weight type: ``fp32`` (MatMul; fp16 builds are widened to fp32 at load), ``int8`` (MatMulNBits,
8-bit blocks of 32) or ``int4/B`` (MatMulNBits, 4-bit blocks of B), with zero points and
``accuracy_level`` 4, as the exporter writes them.  It is run as the ONNX backend runs a model: the
cache bound as OrtValues (runtime/onnxrt.py).  Speed does not depend on the weights' values, only on
shapes and types.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

MS = "com.microsoft"
FLOAT, UINT8, INT32 = 1, 2, 6           # TensorProto.DataType
ACCURACY_LEVEL = 4                       # exporters/onnx/export.py's default
# a probe's weight type -> (bits, block) of its MatMulNBits products; None: float32 MatMul
WEIGHT_BITS = {"fp32": None, "int8": (8, 32), "int4/32": (4, 32), "int4/128": (4, 128)}
WEIGHT_TYPES = tuple(WEIGHT_BITS)


# --- protobuf wire format: just what a ModelProto needs -------------------------------------
def _varint(n: int) -> bytes:
    n &= (1 << 64) - 1                   # int64 fields: two's complement
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(num: int, payload: bytes | str | int | float) -> bytes:
    if isinstance(payload, str):
        payload = payload.encode()
    if isinstance(payload, bytes):
        return _varint(num << 3 | 2) + _varint(len(payload)) + payload
    if isinstance(payload, float):
        return _varint(num << 3 | 5) + struct.pack("<f", payload)
    return _varint(num << 3) + _varint(payload)


def _attr(name: str, value: int | float) -> bytes:
    if isinstance(value, float):
        return _field(1, name) + _field(2, value) + _field(20, 1)      # FLOAT
    return _field(1, name) + _field(3, value) + _field(20, 2)          # INT


def _node(op: str, inputs: list[str], outputs: list[str], domain: str = "", **attrs) -> bytes:
    body = b"".join(_field(1, i) for i in inputs) + b"".join(_field(2, o) for o in outputs)
    body += _field(4, op) + b"".join(_field(5, _attr(k, v)) for k, v in attrs.items())
    return body + (_field(7, domain) if domain else b"")


def _tensor(name: str, arr: np.ndarray) -> bytes:
    dtype = {np.dtype(np.float32): FLOAT, np.dtype(np.uint8): UINT8, np.dtype(np.int32): INT32}[arr.dtype]
    return b"".join(_field(1, d) for d in arr.shape) + _field(2, dtype) + _field(8, name) + \
        _field(9, np.ascontiguousarray(arr).tobytes())


def _value_info(name: str, dims: list[int | str], dtype: int = FLOAT) -> bytes:
    shape = b"".join(_field(1, _field(2, d) if isinstance(d, str) else _field(1, d)) for d in dims)
    tensor_type = _field(1, dtype) + _field(2, shape)
    return _field(1, name) + _field(2, _field(1, tensor_type))


def _model(nodes: list[bytes], inits: list[bytes], inputs: list[bytes], outputs: list[bytes]) -> bytes:
    graph = b"".join(_field(1, n) for n in nodes) + _field(2, "edgellm-kernel-probe") + \
        b"".join(_field(5, t) for t in inits) + b"".join(_field(11, i) for i in inputs) + \
        b"".join(_field(12, o) for o in outputs)
    opsets = _field(8, _field(1, "") + _field(2, 17)) + _field(8, _field(1, MS) + _field(2, 1))
    return _field(1, 8) + _field(2, "edgellm") + _field(7, graph) + opsets


# --- the probe ----------------------------------------------------------------------------
class _Builder:
    def __init__(self, weight_type: str, rng: np.random.Generator):
        if weight_type not in WEIGHT_TYPES:
            raise ValueError(f"not a probe weight type: {weight_type}")
        self.type, self.rng = weight_type, rng
        self.nodes: list[bytes] = []
        self.inits: list[bytes] = []

    def init(self, name: str, arr: np.ndarray) -> str:
        self.inits.append(_tensor(name, arr))
        return name

    def node(self, op: str, inputs: list[str], name: str, domain: str = "", outputs: tuple[str, ...] = (),
             **attrs) -> str:
        self.nodes.append(_node(op, inputs, [name, *outputs], domain, **attrs))
        return name

    def matmul(self, x: str, k: int, n: int, name: str) -> str:
        if WEIGHT_BITS[self.type] is None:
            w = self.rng.standard_normal((k, n), np.float32) * 0.02
            return self.node("MatMul", [x, self.init(name + ".w", w)], name)
        bits, block = WEIGHT_BITS[self.type]
        blocks = -(-k // block)
        packed = self.rng.integers(0, 256, (n, blocks, block * bits // 8), np.uint8)
        scales = np.full((n, blocks), 0.01, np.float32)
        zeros = np.full((n, -(-blocks * bits // 8)), 0x88 if bits == 4 else 128, np.uint8)
        ins = [x, self.init(name + ".q", packed), self.init(name + ".s", scales), self.init(name + ".z", zeros)]
        return self.node("MatMulNBits", ins, name, MS, K=k, N=n, bits=bits, block_size=block,
                         accuracy_level=ACCURACY_LEVEL)

    def norm(self, x: str, width: int, name: str) -> str:
        w = self.init(name + ".w", np.ones(width, np.float32))
        return self.node("SimplifiedLayerNormalization", [x, w], name, axis=-1, epsilon=1e-6)


def write(path: Path, shape, weight_type: str, seed: int = 0) -> Path:
    """Write a probe of ``shape`` (runtime.synthetic_gguf.Shape: hidden, ffn, layers, heads,
    kv_heads, context) whose matrices are all ``weight_type``.  Inputs: ``x`` [1, seq, hidden], the
    cache ``past.I.key/value`` [1, kv_heads, past, head_dim], ``seqlens_k`` and ``total`` as
    GroupQueryAttention takes them; outputs: the last hidden state and the new cache."""
    g = _Builder(weight_type, np.random.default_rng(seed))
    h, f, hd = shape.hidden, shape.ffn, shape.hidden // shape.heads
    kv = shape.kv_heads * hd
    angles = np.outer(np.arange(shape.context), 1e4 ** (-np.arange(0, hd, 2) / hd)).astype(np.float32)
    cos, sin = g.init("cos", np.cos(angles)), g.init("sin", np.sin(angles))
    inputs = [_value_info("x", [1, "seq", h]), _value_info("seqlens_k", [1], INT32), _value_info("total", [], INT32)]
    outputs, x, pending = [], "x", None
    for i in range(shape.layers):
        p = f"l{i}."
        if pending is None:
            a = g.norm(x, h, p + "attn_norm")
        else:
            a = g.node("SkipSimplifiedLayerNormalization", [pending, x, g.init(p + "attn_norm.w", np.ones(h, np.float32))],
                       p + "attn_norm", MS, outputs=("", "", p + "res0"), epsilon=1e-6)
            x = p + "res0"
        qkv = g.matmul(a, h, h + 2 * kv, p + "qkv")
        past, present = [f"past.{i}.key", f"past.{i}.value"], [f"present.{i}.key", f"present.{i}.value"]
        inputs += [_value_info(n, [1, shape.kv_heads, "past", hd]) for n in past]
        outputs += [_value_info(n, [1, shape.kv_heads, "total", hd]) for n in present]
        attn = g.node("GroupQueryAttention", [qkv, "", "", *past, "seqlens_k", "total", cos, sin], p + "attn", MS,
                      outputs=tuple(present), num_heads=shape.heads, kv_num_heads=shape.kv_heads, do_rotary=1,
                      rotary_interleaved=0, local_window_size=-1)
        o = g.matmul(attn, h, h, p + "o")
        m = g.node("SkipSimplifiedLayerNormalization", [o, x, g.init(p + "ffn_norm.w", np.ones(h, np.float32))],
                   p + "ffn_norm", MS, outputs=("", "", p + "res1"), epsilon=1e-6)
        x = p + "res1"
        gate, up = g.matmul(m, h, f, p + "gate"), g.matmul(m, h, f, p + "up")
        act = g.node("Mul", [g.node("Mul", [gate, g.node("Sigmoid", [gate], p + "sig")], p + "silu"), up], p + "act")
        pending = g.matmul(act, f, h, p + "down")
    x = g.node("Add", [pending, x], "last")
    outputs.insert(0, _value_info(x, [1, "seq", h]))
    path.write_bytes(_model(g.nodes, g.inits, inputs, outputs))
    return path


class Probe:
    """A probe session run as the ONNX backend runs a model: the cache bound as OrtValues."""

    def __init__(self, path: Path, shape, threads: int):
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.log_severity_level = 3
        self.sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        self.shape, self.rng = shape, np.random.default_rng(1)

    def run_fn(self, tokens: int, past: int):
        """A function running ``tokens`` positions after ``past`` cached ones, inputs bound once."""
        import onnxruntime as ort

        s = self.shape
        hd = s.hidden // s.heads
        b = self.sess.io_binding()
        b.bind_cpu_input("x", self.rng.standard_normal((1, tokens, s.hidden), np.float32))
        b.bind_cpu_input("seqlens_k", np.array([past + tokens - 1], np.int32))
        b.bind_cpu_input("total", np.array(past + tokens, np.int32))
        cache = np.zeros((1, s.kv_heads, past, hd), np.float32)
        for i in range(s.layers):
            for kind in ("key", "value"):
                b.bind_ortvalue_input(f"past.{i}.{kind}", ort.OrtValue.ortvalue_from_numpy(cache.copy()))
        for o in self.sess.get_outputs():
            b.bind_output(o.name)
        return lambda: self.sess.run_with_iobinding(b)


def time_probe(path: Path, shape, threads: int, prompt: int, gen: int, repeats: int,
               past: int, evict=None) -> tuple[list[float], list[float]]:
    """Seconds to run a ``prompt``-token prompt at once, and per token to run one token after
    ``past`` cached ones (``gen`` runs, ``evict()`` untimed before each), one figure per repeat,
    after a warm-up run of each."""
    import time

    from edgellm.runtime.membench import timed_steps

    probe = Probe(path, shape, threads)
    prefill, decode = probe.run_fn(prompt, 0), probe.run_fn(1, past)
    prefill()
    decode()
    pre, dec = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        prefill()
        pre.append(time.perf_counter() - t0)
        dec.append(timed_steps(decode, gen, evict) / gen)
    return pre, dec
