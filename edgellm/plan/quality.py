"""Expected quality loss per build, before anything is measured.

Starting table: llama.cpp file types on a small trained llama (23 M params), held-out text, KLD
against its own F16, no importance matrix (edgellm shared/anchors.md, "Quality per GGUF type").
Small models lose more per bit than large ones, so the planner uses these to rank builds, not as
promises; ``edgellm eval`` measures the real numbers.  Rows marked "estimate" have no measurement.
"""

from __future__ import annotations

from dataclasses import dataclass

from edgellm.plan.choice import BuildChoice

MEASURED = "llama.cpp on a 23M trained llama, no imatrix (anchors table)"
ESTIMATE = "estimate"


@dataclass(frozen=True)
class Quality:
    kld: float              # mean KL divergence against the unquantized model
    ppl_ratio: float        # perplexity / reference perplexity
    top1: float             # share of tokens whose argmax agrees with the reference
    source: str


_GGUF = {
    "F16": Quality(0.0, 1.0, 1.0, "reference"),
    "Q8_0": Quality(0.00035, 1.0007, 0.991, MEASURED),
    "Q6_K": Quality(0.0021, 1.0022, 0.978, MEASURED),
    "Q5_K_M": Quality(0.0050, 1.0048, 0.969, MEASURED),
    "Q4_K_M": Quality(0.0159, 1.0150, 0.946, MEASURED),
    "Q4_0": Quality(0.0247, 1.0230, 0.932, MEASURED),
    "Q3_K_M": Quality(0.0417, 1.0394, 0.911, MEASURED),
    "Q2_K": Quality(0.1883, 1.1843, 0.819, MEASURED),
    # between Q4_K_M (4.9 bpw) and Q4_0 (4.5 bpw) by bits per weight (4.25 bpw + Q5_K/Q6_K parts)
    "IQ4_XS": Quality(0.0185, 1.0175, 0.940, ESTIMATE),
}
_ONNX = {
    "fp32": Quality(0.0, 1.0, 1.0, ESTIMATE),
    "fp16": Quality(0.00001, 1.0000, 0.999, ESTIMATE),
    # 8-bit blocks of 32 with a scale and zero point: like Q8_0, plus int8 activations (accuracy level 4)
    "int8": Quality(0.0010, 1.0020, 0.985, ESTIMATE),
    # asymmetric 4-bit with a float32 scale per block: like Q4_1, between Q4_K_M and Q4_0
    "int4/32": Quality(0.0200, 1.0190, 0.940, ESTIMATE),
    "int4/128": Quality(0.0350, 1.0330, 0.918, ESTIMATE),
}
_KV_Q8_COST = 0.0005        # estimate: llama.cpp's q8_0 cache adds little loss


def _int4(block: int) -> Quality:
    """Blocks of 32 and 128 are in the table; others take the nearer of the two, rounding toward
    the larger loss for blocks between them."""
    return _ONNX["int4/32"] if block <= 32 else _ONNX["int4/128"]


def expected(choice: BuildChoice) -> Quality:
    if choice.format == "gguf":
        q = _GGUF[choice.quant]
    else:
        q = _ONNX[choice.quant] if choice.quant != "int4" else _int4(choice.block_size or 32)
    if choice.kv_cache == "q8_0":
        source = q.source if q.source == ESTIMATE else f"{q.source} + estimate for the q8_0 cache"
        return Quality(q.kld + _KV_Q8_COST, q.ppl_ratio + _KV_Q8_COST, q.top1 - 0.002, source)
    return q
