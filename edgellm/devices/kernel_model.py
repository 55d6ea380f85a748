"""How long llama.cpp's matrix kernels take for one build, from rates measured on the device.

A matrix-vector product over a quantized matrix costs a fixed amount per *row* (one dot
product's setup and horizontal sum, whatever its length) plus an amount per *weight* (the
block's bytes streamed and unpacked).  On a 2-core EPYC, Q8_0 measured 11 ns per row and 29 ps
per weight, Q4_0 8 ns and 14 ps: for Qwen2.5-0.5B's rows of 896 weights the per-row share is 30-40%
of the time, which is why one bytes-per-second figure per type, taken on another model, does not
carry over.
So every ggml tensor type gets four measured figures (edgellm/devices/kernels.py):

- decode: seconds per row and per weight of each matrix read for a token, timed with the CPU's
  caches refilled with other bytes before every token: a model worth planning for streams its
  weights from memory, while a 50-100 MB probe can sit in a server's last-level cache (a cloud
  Xeon with 480 MiB of L3 decoded such a Q4_0 probe 2.4x faster per weight than a 400 MB model);
- prefill: the same per prompt token (the head only for the last token, as llama.cpp computes
  it).  The per-row figure also carries the element-wise work, which grows with a layer's width as
  its rows do (on the 2-core EPYC, with attention still in the figures then, a Q4_0 layer 1024
  wide prefilled at 10 ps per weight and token, one 2048 wide at 6.6).  A prompt's attention is
  priced apart (below), per cache type and head size, because it grows with the prompt's square
  and its kernel depends on the cache: with an f16 cache llama.cpp runs it tiled, with q8_0 a
  query row at a time (a 2-core Xeon, three runs: 2.6-2.9 and 13.2-15.4 ns per query head,
  position attended and layer for heads of 64; a q8_0 cache slowed a small mixture's 512-token
  prefill by 55%);

and the runtime three: decode seconds per token (graph build, sampling), per decoder layer (the
graph's other nodes and the threads' barriers between them, pinned by tiny probes of 4, 12 and 24
narrow layers), and decode's attention over the KV cache (measured as the slowdown of decode at
depth), which the planner adds for the position it predicts at.  Attention is measured per head
size: its cost does not follow its FLOPs, because llama.cpp's CPU flash attention runs a head's dot
products and updates in SIMD steps of the build's vector width and the rest element by element (on
a 2-core Xeon with AVX512-FP16, whose half-precision step is 128, a head of 64 or 96 took 65-131 ns
per query head, cached position and layer with an f16 cache, one of 128 took 31 and one of 256 39);
each cache type llama.cpp runs for edgellm's builds (f16, q8_0) is measured too.  A head size the
profile has no figure for is priced at the one FLOP rate instead.  The
per-layer work that grows with the layer's width (norms, rope) is carried in the per-row
figures.  A build's time is the sum over its tensors at their own type's rates.  Numpy-free and
torch-free: the device imports it to fit the figures.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

HEADS = ("output.weight", "token_embd.weight")


@dataclass(frozen=True)
class TypeRate:
    """One ggml type's kernels on one device."""
    decode_row_ns: float
    decode_weight_ps: float
    prefill_row_ns: float | None = None       # per row and prompt token; None: not measured
    prefill_weight_ps: float | None = None    # per weight and prompt token
    source: str = ""


@dataclass(frozen=True)
class RuntimeCost:
    """What a generated token costs beyond the layers' matrices."""
    token_us: float
    attention_gflops: float | None = None     # None: the KV cache read at the bandwidth instead
    source: str = ""
    # per decoder layer and generated token: the graph's other nodes and the threads' barriers
    # between them, whatever the layer's width (SmolLM2-135M's 30 narrow layers decode 20-30%
    # slower than rows and weights alone predict)
    layer_us: float = 0.0
    # decode attention in ns per query head, cached position and layer: (cache type, head size, ns)
    attention_ns: tuple[tuple[str, int, float], ...] = ()
    # prefill attention the same way, per query head, position it attends to and layer, in a batch
    # of prompt tokens (another kernel: f16 caches run tiled, q8_0 a row at a time); measured
    # with the per-type prefill figures, which then carry none of their probes' attention
    prefill_attention_ns: tuple[tuple[str, int, float], ...] = ()

    def attention_seconds(self, kv_cache: str, head_dim: int, head_positions: float) -> float | None:
        """Decode attention's seconds over ``head_positions`` (query heads x cached positions,
        summed over layers) with this cache type and head size, or None where not measured."""
        ns = next((ns for kv, hd, ns in self.attention_ns if kv == kv_cache and hd == head_dim), None)
        return None if ns is None else ns * 1e-9 * head_positions

    def prefill_attention_seconds(self, kv_cache: str, head_dim: int, head_positions: float) -> float | None:
        """A prompt's attention over ``head_positions`` (query heads x positions each attends to,
        summed over layers and prompt tokens), or None where the profile has no prefill figures
        (its per-type figures then carry their probes' attention, as profiles before these did).
        A head size not measured is priced from the nearest one measured for the cache type, in
        proportion to the head size (its FLOPs); a cache type with no figure (lost in a noisy
        timing) at the f16 cache's, which the per-type figures were cleared of: a lower bound, not
        nothing."""
        measured = [(hd, ns) for kv, hd, ns in self.prefill_attention_ns if kv == kv_cache] or \
            [(hd, ns) for kv, hd, ns in self.prefill_attention_ns if kv == "f16"]
        if not measured:
            return None
        hd, ns = min(measured, key=lambda m: (abs(m[0] - head_dim), m[0]))
        return ns * head_dim / hd * 1e-9 * head_positions


@dataclass(frozen=True)
class Load:
    """Rows and weights one ggml type contributes: per generated token, and per prompt."""
    rows: int = 0                   # layer matrices
    weights: int = 0
    head_rows: int = 0              # the output projection (tied or not), once per prompt
    head_weights: int = 0
    layers: int = 0                 # a probe's decoder layers (the fit's per-layer column)

    def decode(self) -> tuple[int, int]:
        return self.rows + self.head_rows, self.weights + self.head_weights

    def prefill(self, prompt: int) -> tuple[int, int]:
        return prompt * self.rows + self.head_rows, prompt * self.weights + self.head_weights


def loads(model, typed) -> dict[str, Load]:
    """``typed``: (TensorSpec, ggml type) for every tensor of a build -> its matrices' load per
    type.  Embedding tables read one row per token, and vectors, cost nothing here."""
    acc: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0, 0])
    for t, ty in typed:
        if not t.is_matrix or model.gathered_only(t.name):
            continue
        a = acc[ty]
        k = 2 if t.name in HEADS else 0
        a[k] += t.active_rows                # a mixture of experts: the token's top-k experts
        a[k + 1] += t.active_elements
    return {ty: Load(*a) for ty, a in acc.items()}


def decode_seconds(load: dict[str, Load], rates: dict[str, TypeRate], cost: RuntimeCost,
                   fallback_weight_s: dict[str, float], layers: int = 0) -> float:
    """Seconds per generated token of a model of ``layers`` decoder layers, KV cache excluded.  A
    type without measured rates streams at ``fallback_weight_s[type]`` seconds per weight (the
    roofline's bandwidth)."""
    t = (cost.token_us + cost.layer_us * layers) * 1e-6
    for ty, ld in load.items():
        rows, weights = ld.decode()
        r = rates.get(ty)
        t += rows * r.decode_row_ns * 1e-9 + weights * r.decode_weight_ps * 1e-12 if r else \
            weights * fallback_weight_s[ty]
    return t


def prefill_seconds(load: dict[str, Load], rates: dict[str, TypeRate], prompt: int,
                    fallback_weight_s: dict[str, float]) -> float:
    """Seconds to evaluate a ``prompt``-token prompt (one batch)."""
    t = 0.0
    for ty, ld in load.items():
        rows, weights = ld.prefill(prompt)
        r = rates.get(ty)
        if r is not None and r.prefill_weight_ps is not None:
            t += rows * (r.prefill_row_ns or 0.0) * 1e-9 + weights * r.prefill_weight_ps * 1e-12
        else:
            t += weights * fallback_weight_s[ty]
    return t
