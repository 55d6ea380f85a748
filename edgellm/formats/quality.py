"""Expected quality loss per build, before anything is exported.

Measured by ``benchmarks/quality.py`` on edgellm's own ``bench`` reference model (24 M parameters,
trained here on Python source; held-out text, context 512, KL divergence against the model's own
F16 through llama.cpp): plain llama.cpp file types, edgellm's calibrated builds, and the ONNX
weight types.  Small models lose more per bit than large ones, so the planner uses these to rank
builds, not as promises; ``edgellm eval`` and every export's verification measure the real
numbers for the user's model.  Rows marked "estimate" have no measurement.
"""

from __future__ import annotations

from dataclasses import dataclass


MEASURED = "measured on edgellm's 24M reference model (benchmarks/quality.py)"
ESTIMATE = "estimate"


@dataclass(frozen=True)
class Quality:
    kld: float              # mean KL divergence against the unquantized model
    ppl_ratio: float        # perplexity / reference perplexity
    top1: float             # share of tokens whose argmax agrees with the reference
    source: str


def _m(kld: float, ppl: float, top1: float) -> Quality:
    return Quality(kld, ppl, top1, MEASURED)


# (benchmarks/RESULTS.md, "Quality per byte"; 32 windows of 512 held-out tokens, 16,384 scored)
_GGUF = {
    "F16": Quality(0.0, 1.0, 1.0, "reference"),
    "Q8_0": _m(0.00021, 1.0000, 0.991),
    "Q6_K": _m(0.00116, 1.0021, 0.981),
    "Q5_K_M": _m(0.00213, 1.0022, 0.973),
    "Q4_K_M": _m(0.00577, 1.0041, 0.956),
    "Q4_0": _m(0.01024, 1.0096, 0.944),
    "IQ4_XS": _m(0.00810, 1.0070, 0.950),
    "Q3_K_M": _m(0.01875, 1.0116, 0.928),
    "Q2_K": _m(0.07317, 1.0538, 0.858),
}
_GGUF_CALIBRATED = {
    "Q8_0": _m(0.00020, 1.0001, 0.992),
    "Q6_K": _m(0.00075, 1.0005, 0.984),
    "Q5_K_M": _m(0.00163, 1.0005, 0.976),
    "Q4_K_M": _m(0.00331, 1.0015, 0.967),
    "Q4_0": _m(0.00462, 1.0026, 0.961),
    "IQ4_XS": _m(0.00560, 1.0024, 0.957),
    "Q3_K_M": _m(0.00919, 1.0048, 0.946),
    "Q2_K": _m(0.03523, 1.0279, 0.900),
}
_ONNX = {
    "fp32": Quality(0.0, 1.0, 1.0, "reference"),
    "fp16": _m(0.00000, 1.0000, 1.000),
    "int8": _m(0.00652, 1.0057, 0.955),
    "int4/32": _m(0.01419, 1.0129, 0.933),
    "int4/128": _m(0.02306, 1.0194, 0.916),
}
_ONNX_CALIBRATED = {
    "int4/32": _m(0.00877, 1.0037, 0.947),
    "int4/128": _m(0.01317, 1.0111, 0.938),
}
_KV_Q8_COST = 0.0005        # estimate: llama.cpp's q8_0 cache adds little loss


def _int4(block: int, table: dict) -> Quality:
    """Blocks of 32 and 128 are in the table; others take the nearer of the two, rounding toward
    the larger loss for blocks between them."""
    return table["int4/32"] if block <= 32 else table["int4/128"]


def _with_cache(q: Quality, kv_cache: str) -> Quality:
    if kv_cache != "q8_0":
        return q
    source = q.source if q.source == ESTIMATE else f"{q.source} + estimate for the q8_0 cache"
    return Quality(q.kld + _KV_Q8_COST, q.ppl_ratio + _KV_Q8_COST, q.top1 - 0.002, source)


def gguf(quant: str, calibrated: bool, kv_cache: str) -> Quality:
    return _with_cache((_GGUF_CALIBRATED if calibrated else _GGUF)[quant], kv_cache)


def onnx(quant: str, block: int | None, calibrated: bool) -> Quality:
    if quant == "int4":
        return _int4(block or 32, _ONNX_CALIBRATED if calibrated else _ONNX)
    return _ONNX[quant]


def onnx_npu(quant: str) -> Quality:
    """Per-channel weights: int8 as the CPU build's int8 columns; int4 at least as lossy as blocks
    of 128 (an estimate: the NPU build is not in the measured table)."""
    if quant == "int8":
        return _ONNX["int8"]
    q = _ONNX["int4/128"]
    return Quality(q.kld, q.ppl_ratio, q.top1, f"{ESTIMATE} (per-channel int4; the CPU int4/128 figure as a floor)")
