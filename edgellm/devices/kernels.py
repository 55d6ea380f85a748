"""Kernel rates per weight type, measured with each runtime itself (``edgellm device measure``).

The rates are those of :mod:`edgellm.devices.kernel_model`: per type, seconds per row and per
weight for decode and prefill; per runtime, seconds per token.  To separate them,
each type is measured on two random-weight llama-shaped probes (runtime/synthetic_gguf.py,
100-150 M parameters) with rows of 1024 and 2048 weights, each
quantized *pure* (every matrix that type) by llama.cpp's own quantizer and profiled by edgellm's
llama.cpp backend; two tiny probes of 4 and 12 layers (rows of 64) pin the per-token cost.
Decode is timed a token at a time with the CPU's caches refilled before each (a server's
last-level cache can hold a probe, never a model worth planning), and a prompt's attention, timed
on the attention probes per cache type and head size, is taken out of the prefill timings.  A
non-negative least-squares fit on relative error turns the timings into the figures.  About 10 s
per type on a 2-core x86 (more where the last-level cache is large: the refills are reads of twice
its size).  ONNX Runtime's kernels are measured the same way on probe graphs of
the ONNX export's own ops (runtime/onnx_probe.py), per weight type of its builds.

Every timing is checked for a busy machine (runtime/busy.py): taken again when another process
used the CPU meanwhile or its repeats are far apart, refused (MachineBusy) after three tries.

Numpy, llama-cpp-python and onnxruntime only: this runs on the device, with no torch, no gguf and
no onnx package.
"""

from __future__ import annotations

import ctypes
import dataclasses
import os
import shutil
import statistics
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np

from edgellm.core.ggml import kv_cache_block
from edgellm.devices.kernel_model import Load, RuntimeCost, TypeRate, loads
from edgellm.runtime import busy

# ggml tensor type -> the llama.cpp file type whose *pure* quantization stores every matrix in it
BASE = "Q8_0"          # the ggml type whose probes also pin the runtime's per-token cost
PURE_FTYPE = {"F16": None, "Q8_0": "Q8_0", "Q6_K": "Q6_K", "Q5_K": "Q5_K_M", "Q5_1": "Q5_1", "Q5_0": "Q5_0",
              "Q4_K": "Q4_K_M", "Q4_0": "Q4_0", "IQ4_NL": "IQ4_NL", "IQ4_XS": "IQ4_XS", "Q3_K": "Q3_K_M",
              "Q2_K": "Q2_K"}
GGML_TYPES = tuple(PURE_FTYPE)
RUNTIME = "llama.cpp"
PROMPT, GEN, REPEATS = 512, 64, 3     # the prompt the planner predicts at; the attention probes' decode: GEN tokens
# the probes' decode: COLD_GEN tokens, each after the CPU's caches were filled with other bytes
# (runtime/membench.CacheEvictor): a probe of 50-100 MB can sit in a server's last-level cache,
# where it decodes up to 2.4x faster per weight than any model worth planning for
COLD_GEN = 16
SHORT, DEPTH = 8, 1024                 # decode after a short prompt; attention timed at DEPTH
# decode attention per cache type and head size (kernel_model.py says why): the head sizes of the
# families edgellm exports, each on a probe of 16 query heads over 4 KV heads, timed at a depth near
# the planner's position (576 cached tokens)
ATTENTION_HEAD_DIMS, ATTENTION_DEPTH = (64, 80, 96, 128, 256), 512
ATTENTION_CACHES = ("f16", "q8_0")             # the cache types GGUF builds are planned with


def _shapes():
    from edgellm.runtime.synthetic_gguf import Shape

    # the first probe's FFN is 4.75x its width, as Qwen2.5-0.5B's is 5.4x: with 2816 (2.75x) Q4_K's
    # prefill figure came out too fast for long rows (the Qwen shape's Q3_K_M prefill planned at 1.32x
    # the measured rate on a 2-core Zen 3 EPYC; 1.13x with 4864, benchmarks/RESULTS.md)
    probes = (Shape(hidden=1024, ffn=4864, layers=8, heads=16, kv_heads=4, vocab=4096, context=2048),
              Shape(hidden=2048, ffn=5632, layers=2, heads=16, kv_heads=4, vocab=4096, context=2048))
    tiny = tuple(Shape(hidden=64, ffn=256, layers=n, heads=1, kv_heads=1, vocab=4096, context=2048) for n in (4, 12, 24))
    return probes, tiny


def _attention_shapes():
    from edgellm.runtime.synthetic_gguf import Shape

    return tuple(Shape(hidden=512, ffn=256, layers=8, heads=16, kv_heads=4, vocab=4096, context=2048, head_dim=hd)
                 for hd in ATTENTION_HEAD_DIMS)


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
    return dataclasses.replace(loads(model, [(t, ggml_type) for t in model.tensors])[ggml_type], layers=shape.layers)


def _time(path: Path, threads: int, evict: Callable[[], None], depth: int = 0) -> tuple[tuple[float, ...], ...]:
    """(prefill seconds for PROMPT tokens, decode seconds per token after a short prompt, or after
    ``depth`` tokens of cache, each token from cold caches), one figure per repeat."""
    from edgellm.runtime.llamacpp import LlamaCppModel

    m = LlamaCppModel.open(path, n_ctx=max(PROMPT, depth) + SHORT + COLD_GEN + 8, threads=threads)
    try:
        pre = m.profile(PROMPT, 1, REPEATS)
        dec = m.profile(SHORT, COLD_GEN, REPEATS, depth=depth, evict=evict)
    finally:
        del m
    return tuple(PROMPT / t for t in pre.samples_prefill_tps), tuple(1.0 / t for t in dec.samples_decode_tps)


def _time_attention(path: Path, threads: int, kv_cache: str) -> tuple[tuple[float, ...], ...]:
    """(decode seconds per token after a short prompt, and after ATTENTION_DEPTH more cached
    tokens; prefill seconds of a PROMPT-token prompt, and of the same prompt after ATTENTION_DEPTH
    cached tokens), one figure per repeat: the same batches, so only attention tells them apart."""
    from edgellm.runtime.llamacpp import LlamaCppModel

    m = LlamaCppModel.open(path, n_ctx=ATTENTION_DEPTH + max(PROMPT + 1, SHORT + GEN) + 8, threads=threads,
                           kv_cache=kv_cache)
    try:
        shallow = m.profile(SHORT, GEN, REPEATS)
        deep = m.profile(SHORT, GEN, REPEATS, depth=ATTENTION_DEPTH)
        prompt = m.profile(PROMPT, 1, REPEATS)
        prompt_deep = m.profile(PROMPT, 1, REPEATS, depth=ATTENTION_DEPTH)
    finally:
        del m
    return (tuple(1.0 / t for t in shallow.samples_decode_tps), tuple(1.0 / t for t in deep.samples_decode_tps),
            tuple(PROMPT / t for t in prompt.samples_prefill_tps),
            tuple(PROMPT / t for t in prompt_deep.samples_prefill_tps))


Table = tuple[tuple[str, int, float], ...]


def measure_attention(threads: int, work: Path, progress: Callable[[str], None], notes: list[str] | None = None,
                      shapes=None) -> tuple[Table, Table]:
    """(cache type, head size, ns per query head, position attended and layer) of decode attention
    and of a prompt's, per probe and cache type; one whose deeper cache did not measure slower is
    left out (the planner then prices decode at the FLOP rate, a prompt from the nearest head size)."""
    from edgellm.runtime.synthetic_gguf import write

    decode, prefill = [], []
    for shape in shapes or _attention_shapes():
        progress(f"measuring llama.cpp attention, heads of {shape.hd}")
        path = write(work / f"attention-{shape.hd}.gguf", shape)
        for kv in ATTENTION_CACHES:
            if shape.hd % kv_cache_block(kv):        # a cache's blocks must divide a head: never planned
                continue
            shallow, deep, prompt, prompt_deep = timed(f"llama.cpp attention, heads of {shape.hd}, {kv} cache",
                                                       lambda: _time_attention(path, threads, kv), progress,
                                                       notes, threads)
            for out, (a, b), queries in ((decode, (shallow, deep), 1), (prefill, (prompt, prompt_deep), PROMPT)):
                ns = round((b - a) * 1e9 / (shape.layers * shape.heads * ATTENTION_DEPTH * queries), 3)
                if b > 1.01 * a and ns > 0:          # a slowdown lost in the noise is no figure
                    out.append((kv, shape.hd, ns))
        path.unlink()
    return tuple(decode), tuple(prefill)


def without_prompt_attention(timings: dict[str, list], shapes, prefill_ns: Table) -> tuple[dict[str, list], Table]:
    """The probes' prefill timings less their own prompt attention (an f16 cache, their head
    size), so that the per-type figures price the matrices alone and the planner adds the target's
    attention at its own cache type and head size; ``prefill_ns`` comes back empty (and the timings
    as they were: attention then stays folded into the figures) when a probe's head size has no
    figure."""
    cost = RuntimeCost(token_us=0.0, prefill_attention_ns=tuple(f for f in prefill_ns if f[0] == "f16"))
    exact = {hd for _, hd, _ in cost.prefill_attention_ns}
    if any(s.hd not in exact for s in shapes):
        return timings, ()
    attention = [cost.prefill_attention_seconds("f16", s.hd, _probe_model(s).prompt_head_positions(PROMPT))
                 for s in shapes]
    out = {}
    for ty, rows in timings.items():       # (never below half the timing: a noisy figure is no licence)
        out[ty] = [(ld, max(pre - a, pre / 2), dec) for (ld, pre, dec), a in zip(rows, attention)] + rows[len(shapes):]
    return out, prefill_ns


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


def fit(timings: dict[str, list[tuple[Load, float, float]]], attention_gflops: float | None, source: str,
        runtime: str = RUNTIME, base: str = BASE, attention_ns: Table = (), prefill_attention_ns: Table = (),
        decode_rows: bool = True) -> dict:
    """``timings``: type -> (load, prefill s, decode s) per probe, the two probes first; Q8_0 also
    carries the tiny probes, which pin the runtime's per-token and per-layer costs for every type.  The decode
    timings come with the probes' attention (at ``attention_gflops``) taken out; the planner adds
    the target's back at its position.  Prefill timings come with theirs taken out where
    ``prefill_attention_ns`` is given (``without_prompt_attention``), else keep it in the figures."""
    pinned = timings[base]
    token_s, layer_s, *q8 = nnls(np.array([[1.0, ld.layers, *ld.decode()] for ld, _, _ in pinned]),
                                 np.array([d for *_, d in pinned]))
    out: dict[str, object] = {runtime: RuntimeCost(
        token_us=round(float(token_s) * 1e6, 2), source=source, layer_us=round(float(layer_s) * 1e6, 3),
        attention_gflops=None if attention_gflops is None else round(attention_gflops, 2), attention_ns=attention_ns,
        prefill_attention_ns=prefill_attention_ns)}
    for ty, rows in timings.items():
        rows = rows[:2]
        dec = q8 if ty == base else nnls(np.array([ld.decode() for ld, *_ in rows], float)
                                            * ([1.0, 1.0] if decode_rows else [0.0, 1.0]),
                                            np.array([d - token_s - layer_s * ld.layers for ld, _, d in rows]))
        pre = nnls(np.array([ld.prefill(PROMPT) for ld, *_ in rows], float), np.array([p for _, p, _ in rows]))
        out[f"{runtime}:{ty}"] = TypeRate(decode_row_ns=round(float(dec[0]) * 1e9, 3),
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
    return _probe_model(shape).attention_flops(SHORT + COLD_GEN // 2)


def timed(what: str, run: Callable[[], tuple], progress: Callable[[str], None],
          notes: list[str] | None = None, threads: int | None = None) -> tuple[float, ...]:
    """``run()`` -> tuples of samples (prefill and decode; for the attention probes, decode and
    prefill, shallow and deep), taken again while the machine was busy
    (runtime/busy.py: other processes on the CPU, or repeats too far apart); medians.  ``notes``:
    busy timings are kept and said there instead of refused (``device measure --allow-busy``)."""
    samples = busy.quiet(what, run, lambda others, r: busy.verdict(others, r[0]) or
                         next(filter(None, (busy.verdict(None, x) for x in r[1:])), None), progress, notes, threads)
    return tuple(statistics.median(x) for x in samples)


def drift(first: tuple[float, float], again: tuple[float, float]) -> float:
    """How far the machine's speed moved between two timings of the same probe (prefill, decode)."""
    return max(abs(b / a - 1.0) for a, b in zip(first, again) if a > 0)


def measure_kernels(threads: int, progress: Callable[[str], None] = lambda s: None,
                    types: tuple[str, ...] = GGML_TYPES, source: str = "", shapes=None,
                    report: dict | None = None, notes: list[str] | None = None,
                    attention_shapes=None) -> dict[str, object]:
    """``"llama.cpp"`` -> RuntimeCost and ``"llama.cpp:TYPE"`` -> TypeRate, measured here.  The
    first probe is timed again at the end: ``report["drift"]`` is how far the machine's speed
    moved meanwhile (a shared or throttling machine), which no single timing shows."""
    from edgellm.runtime.membench import cache_evictor
    from edgellm.runtime.synthetic_gguf import write

    probes, tiny = shapes or _shapes()
    types = tuple(dict.fromkeys((BASE, *types)))         # BASE carries the runtime's own costs
    evict = cache_evictor()
    work = Path(tempfile.mkdtemp(prefix="edgellm-kernels-"))
    timings: dict[str, list] = {}
    attention = first = None
    try:
        sources = [(s, write(work / f"probe{i}-F16.gguf", s)) for i, s in enumerate(probes)]
        for ty in types:
            progress(f"measuring llama.cpp {ty} kernels")
            tinies = [(s, write(work / f"tiny{i}.gguf", s)) for i, s in enumerate(tiny)] if ty == BASE else []
            for shape, f16 in sources + tinies:
                path = f16 if PURE_FTYPE[ty] is None else work / f"probe-{ty}.gguf"
                if path != f16:
                    _quantize(f16, path, PURE_FTYPE[ty], threads)
                what = f"llama.cpp {ty} on a {shape.hidden}-wide probe"
                pre, dec = timed(what, lambda: _time(path, threads, evict), progress, notes, threads)
                first = first or (pre, dec)
                if attention is None:       # the first probe, Q8_0: attention's rate from depth
                    deep = timed(what + " at depth", lambda: _time(path, threads, evict, DEPTH), progress, notes,
                                 threads)[1]
                    flops = _probe_model(shape).attention_flops(DEPTH + SHORT + COLD_GEN // 2) - \
                        attention_flops(shape)
                    attention = flops / max(deep - dec, 1e-9)
                dec -= attention_flops(shape) / attention     # prefill's: without_prompt_attention
                timings.setdefault(ty, []).append((probe_load(shape, ty), pre, dec))
                if path != f16:
                    path.unlink()
        per_head, prompt_ns = measure_attention(threads, work, progress, notes, attention_shapes)
        timings, prompt_ns = without_prompt_attention(timings, probes, prompt_ns)
        if report is not None and len(types) > 1:
            path = work / "again.gguf"
            _quantize(sources[0][1], path, PURE_FTYPE[BASE], threads)
            again = timed(f"llama.cpp {BASE} again", lambda: _time(path, threads, evict), progress, notes, threads)
            report["drift"] = drift(first, again)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return fit(timings, attention / 1e9, source, attention_ns=per_head, prefill_attention_ns=prompt_ns)


# --- ONNX Runtime ---------------------------------------------------------------------------
ONNX_RUNTIME, ONNX_BASE = "onnxruntime", "int4/32"
ONNX_GEN = COLD_GEN            # single-token runs per repeat, each after the same cache (and cold caches)
ONNX_DEPTH = 1536              # attention's rate: decode after this many more cached tokens (a larger
                               # difference than llama.cpp's 1024: ONNX Runtime's is the noisier)


def onnx_probe_load(shape) -> Load:
    """An ONNX probe's matrices (runtime/onnx_probe.py: the layers' projections, no head or
    embedding)."""
    hd = shape.hidden // shape.heads
    kv = shape.kv_heads * hd
    rows = shape.layers * (2 * shape.hidden + 2 * kv + 2 * shape.ffn + shape.hidden)
    weights = shape.layers * shape.hidden * (2 * shape.hidden + 2 * kv + 3 * shape.ffn)
    return Load(rows=rows, weights=weights, layers=shape.layers)


def measure_onnx_kernels(threads: int, progress: Callable[[str], None] = lambda s: None,
                         types: tuple[str, ...] = (), source: str = "", shapes=None,
                         notes: list[str] | None = None) -> dict[str, object]:
    """``"onnxruntime"`` -> RuntimeCost and ``"onnxruntime:TYPE"`` -> TypeRate for ONNX Runtime's
    kernels (MatMul in fp32, MatMulNBits in 8 and 4 bits, GroupQueryAttention over the cache),
    measured here on random-weight probes run as the ONNX backend runs a model (runtime/onnx_probe.py),
    the same way as llama.cpp's."""
    from edgellm.runtime import onnx_probe
    from edgellm.runtime.membench import cache_evictor

    probes, tiny = shapes or _shapes()
    evict = cache_evictor()
    types = tuple(dict.fromkeys((ONNX_BASE, *(types or onnx_probe.WEIGHT_TYPES))))
    work = Path(tempfile.mkdtemp(prefix="edgellm-onnx-kernels-"))
    timings: dict[str, list] = {}
    past = SHORT + COLD_GEN // 2           # the position llama.cpp's decode timings stand for
    deep = ONNX_DEPTH + past
    extra_flops = extra_s = 0.0            # attention over the deeper cache, summed over both probes

    def run(path, shape, at):
        return lambda: onnx_probe.time_probe(path, shape, threads, PROMPT, ONNX_GEN, REPEATS, at, evict)
    try:
        for ty in types:
            progress(f"measuring ONNX Runtime {ty} kernels")
            for shape in probes + (tiny if ty == ONNX_BASE else ()):
                path = onnx_probe.write(work / "probe.onnx", shape, ty)
                what = f"ONNX Runtime {ty} on a {shape.hidden}-wide probe"
                pre, dec = timed(what, run(path, shape, past), progress, notes, threads)
                if ty == ONNX_BASE and shape in probes:     # attention's rate from depth, both probes
                    deep_s = timed(what + " at depth", run(path, shape, deep), progress, notes, threads)[1]
                    extra_s += max(deep_s - dec, 1e-9)
                    extra_flops += _probe_model(shape).attention_flops(deep) - attention_flops(shape)
                timings.setdefault(ty, []).append((onnx_probe_load(shape), pre, dec))
                path.unlink()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    attention = extra_flops / extra_s
    shapes_timed = probes + tiny                 # in the order each type's rows were taken
    for rows in timings.values():                # decode without the probes' own attention
        for i, (load, pre, dec) in enumerate(rows):
            rows[i] = (load, pre, dec - attention_flops(shapes_timed[i]) / attention)
    # decode per weight only: ONNX Runtime's per-product cost is not a per-row one, and the two
    # probes' rows (1,316 and 2,447 weights on average) cannot tell them apart; a row term fitted
    # there priced the Qwen2.5-0.5B shape's tied head (151,936 rows of 896) at 15.9 ms a token
    # where one MatMulNBits of it measured 11 ms (2-core Zen 3, benchmarks/RESULTS.md)
    return fit(timings, attention / 1e9, source, ONNX_RUNTIME, ONNX_BASE, decode_rows=False)
