"""Kernel rates per ggml tensor type, measured with the runtime itself (``device measure --kernels``).

The rates are those of :mod:`edgellm.devices.kernel_model`: per type, seconds per row and per
weight for decode and prefill; per runtime, seconds per token.  To separate them,
each type is measured on two random-weight llama-shaped probes (runtime/synthetic_gguf.py,
about 100 M parameters each) with rows of 1024 and 2048 weights, each
quantized *pure* (every matrix that type) by llama.cpp's own quantizer and profiled by edgellm's
llama.cpp backend; two tiny probes of 4 and 12 layers (rows of 64) pin the per-token cost.  A non-negative least-squares fit on relative error turns the timings into the
figures.  About 8 s per type on a 2-core x86.

Numpy and llama-cpp-python only: this runs on the device, with no torch and no gguf package.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np

from edgellm.devices.kernel_model import Load, RuntimeCost, TypeRate, loads

# ggml tensor type -> the llama.cpp file type whose *pure* quantization stores every matrix in it
BASE = "Q8_0"          # the ggml type whose probes also pin the runtime's per-token cost
PURE_FTYPE = {"F16": None, "Q8_0": "Q8_0", "Q6_K": "Q6_K", "Q5_K": "Q5_K_M", "Q5_1": "Q5_1", "Q5_0": "Q5_0",
              "Q4_K": "Q4_K_M", "Q4_0": "Q4_0", "IQ4_NL": "IQ4_NL", "IQ4_XS": "IQ4_XS", "Q3_K": "Q3_K_M",
              "Q2_K": "Q2_K"}
GGML_TYPES = tuple(PURE_FTYPE)
RUNTIME = "llama.cpp"
PROMPT, GEN, REPEATS = 512, 128, 3    # the prompt the planner predicts at
SHORT, DEPTH = 8, 1024                 # decode after a short prompt; attention timed at DEPTH


def _shapes():
    from edgellm.runtime.synthetic_gguf import Shape

    probes = (Shape(hidden=1024, ffn=2816, layers=8, heads=16, kv_heads=4, vocab=4096, context=2048),
              Shape(hidden=2048, ffn=5632, layers=2, heads=16, kv_heads=4, vocab=4096, context=2048))
    tiny = tuple(Shape(hidden=64, ffn=256, layers=n, heads=1, kv_heads=1, vocab=4096, context=2048) for n in (4, 12))
    return probes, tiny


def _quantize(src: Path, dst: Path, ftype: str, threads: int) -> None:
    import llama_cpp as C

    from edgellm.errors import EdgeLLMError
    from edgellm.runtime.quiet import captured_stderr

    params = C.llama_model_quantize_default_params()
    params.nthread = threads
    params.ftype = getattr(C, f"LLAMA_FTYPE_MOSTLY_{ftype}")
    params.pure = True
    with captured_stderr(fd=1), captured_stderr():
        rc = C.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    if rc != 0:
        raise EdgeLLMError(f"llama.cpp could not quantize the probe model to {ftype}")
    os.sync()           # the file's write-back must not run during the timing


def _probe_config(shape) -> dict:
    return {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": shape.hidden,
            "intermediate_size": shape.ffn, "num_hidden_layers": shape.layers, "num_attention_heads": shape.heads,
            "num_key_value_heads": shape.kv_heads, "vocab_size": shape.vocab, "tie_word_embeddings": False,
            "max_position_embeddings": shape.context}


def probe_load(shape, ggml_type: str) -> Load:
    """The probe's matrices, every one ``ggml_type`` (a pure quantization)."""
    model = _probe_model(shape)
    return loads(model, [(t, ggml_type) for t in model.tensors])[ggml_type]


def _time(path: Path, threads: int, depth: int = 0) -> tuple[float, float]:
    """(prefill seconds for PROMPT tokens, decode seconds per token after a short prompt, or after
    ``depth`` tokens of cache), medians of REPEATS."""
    from edgellm.runtime.llamacpp import LlamaCppModel

    m = LlamaCppModel.open(path, n_ctx=max(PROMPT, depth) + SHORT + GEN + 8, threads=threads)
    try:
        pre = m.profile(PROMPT, 1, REPEATS)
        dec = m.profile(SHORT, GEN, REPEATS, depth=depth)
    finally:
        del m
    return PROMPT / pre.prefill_tps, 1.0 / dec.decode_tps


def nnls(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Least squares of ``a x = b`` in relative error, with ``x >= 0`` (columns whose
    coefficient comes out negative are dropped and the rest refitted)."""
    w = a / b[:, None]
    cols = list(range(a.shape[1]))
    while cols:
        sol = np.linalg.lstsq(w[:, cols], np.ones(len(b)), rcond=None)[0]
        if (sol >= 0).all():
            x = np.zeros(a.shape[1])
            x[cols] = sol
            return x
        cols = [c for c, v in zip(cols, sol) if v > 0]
    return np.zeros(a.shape[1])


def fit(timings: dict[str, list[tuple[Load, float, float]]], attention_gflops: float, source: str) -> dict:
    """``timings``: type -> (load, prefill s, decode s) per probe, the two probes first; Q8_0 also
    carries the tiny probes, which pin the runtime's per-token cost for every type.  The decode
    timings come with the probes' attention (at ``attention_gflops``) taken out; the planner adds
    the target's back at its position.  Prefill keeps its attention in the figures: batched, it
    runs at another rate, and it is a few percent of a 512-token prompt."""
    base = timings[BASE]
    token_s, *q8 = nnls(np.array([[1.0, *ld.decode()] for ld, _, _ in base]), np.array([d for *_, d in base]))
    out: dict[str, object] = {RUNTIME: RuntimeCost(token_us=round(float(token_s) * 1e6, 2),
                                                   attention_gflops=round(attention_gflops, 2), source=source)}
    for ty, rows in timings.items():
        rows = rows[:2]
        dec = q8 if ty == BASE else nnls(np.array([ld.decode() for ld, *_ in rows], float),
                                            np.array([d - token_s for ld, _, d in rows]))
        pre = nnls(np.array([ld.prefill(PROMPT) for ld, *_ in rows], float), np.array([p for _, p, _ in rows]))
        out[f"{RUNTIME}:{ty}"] = TypeRate(decode_row_ns=round(float(dec[0]) * 1e9, 3),
                                          decode_weight_ps=round(float(dec[1]) * 1e12, 3),
                                          prefill_row_ns=round(float(pre[0]) * 1e9, 4),
                                          prefill_weight_ps=round(float(pre[1]) * 1e12, 4), source=source)
    return out


def _probe_model(shape):
    from edgellm.models.families import from_config_dict

    return from_config_dict(_probe_config(shape), "kernel probe")


def attention_flops(shape) -> float:
    """FLOPs of the probe's attention for a timed decode token: after the short prompt, half-way
    through the generated tokens."""
    return _probe_model(shape).attention_flops(SHORT + GEN // 2)


def measure_kernels(threads: int, progress: Callable[[str], None] = lambda s: None,
                    types: tuple[str, ...] = GGML_TYPES, source: str = "", shapes=None) -> dict[str, object]:
    """``"llama.cpp"`` -> RuntimeCost and ``"llama.cpp:TYPE"`` -> TypeRate, measured here."""
    from edgellm.runtime.synthetic_gguf import write

    probes, tiny = shapes or _shapes()
    types = tuple(dict.fromkeys((BASE, *types)))         # BASE carries the runtime's own costs
    work = Path(tempfile.mkdtemp(prefix="edgellm-kernels-"))
    timings: dict[str, list] = {}
    attention = None
    try:
        sources = [(s, write(work / f"probe{i}-F16.gguf", s)) for i, s in enumerate(probes)]
        for ty in types:
            progress(f"measuring llama.cpp {ty} kernels")
            tinies = [(s, write(work / f"tiny{i}.gguf", s)) for i, s in enumerate(tiny)] if ty == BASE else []
            for shape, f16 in sources + tinies:
                path = f16 if PURE_FTYPE[ty] is None else work / f"probe-{ty}.gguf"
                if path != f16:
                    _quantize(f16, path, PURE_FTYPE[ty], threads)
                pre, dec = _time(path, threads)
                if attention is None:       # the first probe, Q8_0: attention's rate from depth
                    deep = _time(path, threads, DEPTH)[1]
                    flops = _probe_model(shape).attention_flops(DEPTH + SHORT + GEN // 2) - \
                        attention_flops(shape)
                    attention = flops / max(deep - dec, 1e-9)
                dec -= attention_flops(shape) / attention     # prefill keeps its own (batched) attention
                timings.setdefault(ty, []).append((probe_load(shape, ty), pre, dec))
                if path != f16:
                    path.unlink()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return fit(timings, attention / 1e9, source)
