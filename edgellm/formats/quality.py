"""Expected quality loss per build, before anything is exported: a model of mean KL divergence
that transfers across models, sizes and builds.

    KLD(model, build) = x + x^2 / knee,   x = S(model) x noise(build on model)
    noise = sum over weight matrices of share x (e(type) + a(model) if the type's kernels quantize
            the activations) x c(calibration, build)
    S(model) = exp(s0 + s1 ln(parameters / 1e9) + s2 ln(D/N) + s3 ln(D/N)^2), D/N: training tokens per parameter

``share`` is each matrix's part of the model's quantized weights (an untied embedding table, read a
row at a time, counts ``g`` of its size); ``e(type)`` is each weight type's effective noise (ggml's
types, ONNX's int8 columns and int4 blocks); ``a(model) = exp(a0) x (parameters / 1e9) ^ a1`` the
activations' share: llama.cpp's quantized kernels round activations to 8 bits (and ONNX Runtime's
MatMulNBits at accuracy level 4 does too), which costs a small model with large activation outliers
a floor under every quantized build (SmolLM2-135M's Q8_0 loses 0.004 where Llama-3-8B's loses
0.0008); ``c`` the calibration method's factor for that build
(llama.cpp's importance matrix, edgellm's calibrated builds).  ``S`` is how much a model's output
distribution moves per unit of weight noise: mostly larger for models trained on many tokens per
parameter (the precision scaling literature; llama.cpp's own tables show
Llama-3-8B, trained on 15 T tokens, losing 2.5-4x what Llama-2-7B, trained on 2 T, loses at the
same type).  Training length is not in a config.json: ``training_tokens`` reads it from the
families' published model cards, and otherwise assumes 10 T, at most 2,000 per parameter (then the
spread widens).

Every constant below is fitted by ``benchmarks/quality_model.py`` to every point we have:
llama.cpp's published Llama-3-8B and Llama-2-7B scoreboards (tools/perplexity/README.md), the real
SmolLM2-135M-Instruct and edgellm's reference models measured with ``benchmarks/quality.py``.  That
benchmark prints each point predicted (leaving the point's own model out of the fit) against
measured or published; ``spread`` is the fit's typical error factor, shown as ``~`` in the plan.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

# -- fitted by benchmarks/quality_model.py (see its table in benchmarks/RESULTS.md) ---------------
NOISE = {                     # e(type): effective noise per weight type
    "BF16": 1e-06, "F16": 1e-08, "F32": 0, "IQ4_NL": 0.0138, "IQ4_XS": 0.00173, "Q2_K": 0.0343,
    "Q3_K": 0.0123, "Q4_0": 0.00626, "Q4_1": 0.0061, "Q4_K": 0.00343, "Q5_0": 0.00308, "Q5_1": 0.00315,
    "Q5_K": 0.000953, "Q6_K": 0.000533, "Q8_0": 5.86e-05, "onnx:fp16": 1e-08, "onnx:int4/128": 0.0203,
    "onnx:int4/16": 0.00938, "onnx:int4/32": 0.0121, "onnx:int4/64": 0.0157, "onnx:int4/channel": 0.0263,
    "onnx:int8": 6.69e-05,
}
SENSITIVITY = (-2.4128, 0.0596, 0.6170, -0.4844)     # s0, s1, s2, s3
KNEE = 0.3486                 # where the loss grows faster than the noise (a model breaking down)
GATHERED = 0.008                 # g: an untied embedding table's weight in the noise
ACTIVATIONS = (-9.7560, -0.1440)   # a0, a1: 8-bit activations' noise, by model size
CALIBRATION = {               # c(method, build): KLD factor against round-to-nearest
    "imatrix": {"default": 0.892, "Q4_K_M": 0.915, "Q3_K_M": 0.828, "Q2_K": 0.857, "Q8_0": 1.0,
        "Q6_K": 0.876, "Q5_K_M": 0.898, "Q4_0": 0.874, "IQ4_XS": 0.994},
    "edgellm": {"default": 0.981, "Q4_K_M": 0.578, "Q3_K_M": 0.505, "Q2_K": 0.471, "Q8_0": 0.981,
        "Q6_K": 0.456, "Q5_K_M": 0.204, "Q4_0": 0.334, "IQ4_XS": 0.739},
    # measured 0.30-0.49 on the models here, 0.61 on `bench` (RESULTS.md) and 0.81 on a model checked
    # independently (issue 27): the plan promises the worst
    "edgellm-onnx": {"default": 0.81},
}
KV_Q8_KLD = 0.0005                # llama.cpp's q8_0 cache: an estimate (no measurement yet)
PPL_PER_KLD = 0.9                 # ln(perplexity ratio) per unit of mean KLD (llama.cpp's Llama-3-8B table)
TOP1_MISS = (0.5, 0.5)            # 1 - top-1 agreement = a x KLD ^ b (the same table)
SPREAD = 2.0                      # shown as ~: about the fit's own typical error (1.6x); a model unlike
                                  # the fitted ones can be off by more (RESULTS.md: 4x left out)
SPREAD_CALIBRATED = 3.0           # calibrated builds: their gains vary most between models
SPREAD_ASSUMED = 4.0              # with the training length assumed, not known
FITTED_ON = "fitted to llama.cpp's Llama-3-8B/Llama-2-7B tables and models measured here"
# ---------------------------------------------------------------------------------------------

UNDERTRAINED = math.log(20.0)     # ln(tokens per parameter) below which a model counts as undertrained
DEFAULT_TOKENS = 10e12            # a model of the last two years whose card we do not know
ASSUMED_PER_PARAM = 2000.0        # ... at most this many tokens per parameter (Llama 3 8B's order)


@dataclass(frozen=True)
class Quality:
    kld: float              # mean KL divergence against the unquantized model
    ppl_ratio: float        # perplexity / reference perplexity
    top1: float             # share of tokens whose argmax agrees with the reference
    source: str
    spread: float = 1.0     # the truth is typically within kld / spread .. kld x spread

    @property
    def approximate(self) -> bool:
        return self.spread > 1.0


LOSSLESS = Quality(0.0, 1.0, 1.0, "reference")

# Training tokens from the families' model cards, by (model_type, vocabulary): (up to parameters, tokens)
# Llama 2 (2 T), Llama 3 8B/70B (15 T), Llama 3.2 1B/3B (up to 9 T), SmolLM2 135M/360M/1.7B
# (2/4/11 T), Qwen2.5 (18 T), Qwen3 (36 T), Gemma 2 2B/9B/27B (2/8/13 T), Gemma 3 1B/4B/12B/27B
# (2/4/12/14 T), Phi-3-mini (3.3 T), Granite 3 2B/8B (12 T), SmolLM3 (11.2 T), GPT-2 (WebText).
KNOWN_TOKENS: dict[tuple[str, int | None], tuple[tuple[float, float], ...]] = {
    ("llama", 32000): ((math.inf, 2e12),),
    ("llama", 128256): ((5e9, 9e12), (math.inf, 15e12)),
    ("llama", 49152): ((2e8, 2e12), (5e8, 4e12), (math.inf, 11e12)),
    ("qwen2", None): ((math.inf, 18e12),),
    ("qwen3", None): ((math.inf, 36e12),),
    ("gemma2", None): ((4e9, 2e12), (15e9, 8e12), (math.inf, 13e12)),
    ("gemma3_text", None): ((2e9, 2e12), (6e9, 4e12), (15e9, 12e12), (math.inf, 14e12)),
    ("gemma3", None): ((2e9, 2e12), (6e9, 4e12), (15e9, 12e12), (math.inf, 14e12)),
    ("phi3", None): ((math.inf, 3.3e12),),
    ("granite", None): ((math.inf, 12e12),),
    ("smollm3", None): ((math.inf, 11.2e12),),
    ("gpt2", None): ((math.inf, 1e10),),
}


def training_tokens(model) -> tuple[float, str]:
    """(tokens the model was trained on, where that figure comes from)."""
    ref = _reference_record(model)
    if ref is not None:
        return ref, "edgellm reference model's training record"
    rows = KNOWN_TOKENS.get((model.model_type, model.vocab)) or KNOWN_TOKENS.get((model.model_type, None))
    if rows:
        tokens = next(t for limit, t in rows if model.n_params <= limit)
        return tokens, f"{model.model_type} model cards"
    # unknown: a recent model's budget, at most ASSUMED_PER_PARAM tokens per parameter (a tiny or
    # random-weight model is not assumed to be trained like SmolLM2)
    return min(DEFAULT_TOKENS, ASSUMED_PER_PARAM * max(model.n_params, 1)), "assumed (training length unknown)"


def _reference_record(model) -> float | None:
    """A reference model trained here records its steps, batch and sequence length."""
    import json

    where = str(getattr(model, "source", "")).partition(": ")[2]
    if not where:
        return None
    path = Path(where).parent / "edgellm-reference.json"
    try:
        if path.is_file() and path.stat().st_size < 4096:
            r = json.loads(path.read_text())
            return float(r["steps"]) * float(r["batch"]) * float(r["seq"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return None


def sensitivity(model, params=None, tokens: float | None = None) -> float:
    """S = exp(s0 + s1 ln(N / 1e9) + s2 ln(D/N) + s3 min(0, ln(D/N / 20))): past the 20 tokens per
    parameter of compute-optimal training (every published model: 300 for Llama 2, 1,900 for
    Llama 3 8B, 15,000 for SmolLM2-135M) sensitivity grows slowly with training; below it (edgellm's
    reference models, 0.15-1.6) it grows fast: an undertrained network has not yet packed what a
    weight's noise would disturb."""
    s0, s1, s2, s3 = params or SENSITIVITY
    n = max(model.n_params, 1)
    tokens = tokens or training_tokens(model)[0]
    r = math.log(tokens / n)
    return math.exp(min(50.0, s0 + s1 * math.log(n / 1e9) + s2 * r + s3 * min(0.0, r - UNDERTRAINED)))


def calibration_factor(calibration: str | None, label: str, factors=None) -> float:
    """The method's measured KLD factor for the build ``label`` (its geometric mean over builds
    for a label not measured)."""
    if not calibration:
        return 1.0
    fac = (CALIBRATION if factors is None else factors).get(calibration, {})
    return fac.get(label, fac.get("default", 1.0))


FLOAT_TYPES = frozenset({"F32", "F16", "BF16", "onnx:fp16"})     # kernels that keep activations as they are


def activation_noise(model, params=None) -> float:
    a0, a1 = params or ACTIVATIONS
    return math.exp(a0) * (max(model.n_params, 1) / 1e9) ** a1


def noise(model, typed, noise_table=None, gathered=None, activations=None) -> float:
    """The build's noise: ``typed`` is (TensorSpec, type key) per quantized matrix."""
    table = noise_table or NOISE
    g = GATHERED if gathered is None else gathered
    act = activation_noise(model, activations)
    total = weighted = 0.0
    for spec, ty in typed:
        gathered_only = model.gathered_only(spec.name)
        w = spec.n_elements * (g if gathered_only else 1.0)
        total += w
        weighted += w * (table[ty] + (act if ty not in FLOAT_TYPES and not gathered_only else 0.0))
    return weighted / total if total else 0.0


def kld_of(x: float, knee: float | None = None) -> float:
    """Mean KLD from the scaled noise ``x``: proportional while small, faster near the knee."""
    return x + x * x / (KNEE if knee is None else knee)


def predict(model, typed, calibration: str | None = None, kv_cache: str = "f16", label: str = "") -> Quality:
    """The expected quality of a build of ``model`` whose matrices have the types ``typed``."""
    if model is None:
        raise ValueError("the quality model needs the model")
    kld = kld_of(sensitivity(model) * noise(model, typed) * calibration_factor(calibration, label))
    kld = min(kld, math.log(max(model.vocab, 2)))          # a model that has lost everything
    if kv_cache == "q8_0":
        kld += KV_Q8_KLD
    tokens, where = training_tokens(model)
    spread = SPREAD_ASSUMED if where.startswith("assumed") else SPREAD_CALIBRATED if calibration else SPREAD
    a, b = TOP1_MISS
    src = f"{FITTED_ON}; training length: {where}"
    if calibration:
        src += f"; {calibration} calibration factor"
    if kld < 1e-6:
        return Quality(kld, 1.0, 1.0, src, 1.0)
    return Quality(kld, math.exp(min(PPL_PER_KLD * kld, 700.0)), max(0.0, 1.0 - a * kld ** b), src, spread)
