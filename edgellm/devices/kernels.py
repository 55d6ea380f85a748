"""Kernel rates per quant type, measured with the runtime itself (``device measure --kernels``).

One bandwidth figure cannot tell that llama.cpp decodes Q4_0 and IQ4_XS (repacked kernels on x86
and ARM) faster per byte than Q4_K_M, or F16 slower than Q8_0.  So for each GGUF type a
random-weight llama-shaped model (runtime/synthetic_gguf.py: about 100 M parameters, larger than
any CPU cache) is quantized by llama.cpp's own quantizer and profiled by edgellm's llama.cpp
backend, and two figures are kept per type, in the terms the planner's roofline uses
(edgellm/plan/estimate.py):

- ``decode_bandwidth_share``: the bytes a token reads (weights + KV cache) over the measured time
  per token, as a share of the profile's measured read bandwidth;
- ``prefill_gflops``: the prompt's FLOPs over its measured prefill time.

Numpy and llama-cpp-python only: this runs on the device, with no torch and no gguf package.
"""

from __future__ import annotations

import ctypes
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

GGUF_TYPES = ("F16", "Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M", "Q4_0", "IQ4_XS", "Q3_K_M", "Q2_K")
PROMPT, GEN, REPEATS = 128, 32, 3


@dataclass(frozen=True)
class KernelRate:
    decode_bandwidth_share: float
    prefill_gflops: float
    source: str = ""


def _quantize(src: Path, dst: Path, quant: str, threads: int) -> None:
    import llama_cpp as C

    from edgellm.errors import EdgeLLMError
    from edgellm.runtime.quiet import captured_stderr

    params = C.llama_model_quantize_default_params()
    params.nthread = threads
    params.ftype = getattr(C, f"LLAMA_FTYPE_MOSTLY_{quant}")
    with captured_stderr(fd=1), captured_stderr():
        rc = C.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    if rc != 0:
        raise EdgeLLMError(f"llama.cpp could not quantize the probe model to {quant}")


def _probe_config(shape) -> dict:
    return {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": shape.hidden,
            "intermediate_size": shape.ffn, "num_hidden_layers": shape.layers, "num_attention_heads": shape.heads,
            "num_key_value_heads": shape.kv_heads, "vocab_size": shape.vocab, "tie_word_embeddings": False,
            "max_position_embeddings": shape.context}


def rates_from(model, quant: str, prefill_tps: float, decode_tps: float, bandwidth: float, source: str) -> KernelRate:
    """The two figures, in the planner's own terms, from a profile of ``model`` in ``quant``."""
    from edgellm.plan.build import BuildChoice
    from edgellm.plan.estimate import kv_bytes, prefill_flops
    from edgellm.plan.formats import format_for
    from edgellm.plan.runtimes import RUNTIMES

    choice = BuildChoice("gguf", quant, "f16")
    fmt = format_for(choice)
    _, read, _ = fmt.weights(model, choice)
    per_token = 1.0 / decode_tps - RUNTIMES[fmt.runtime].per_token_overhead_s
    position = PROMPT + GEN // 2
    share = (read + kv_bytes(model, choice, position)) / max(per_token, 1e-9) / bandwidth
    flops = prefill_flops(model, PROMPT)
    return KernelRate(decode_bandwidth_share=round(share, 4), prefill_gflops=round(flops * prefill_tps / PROMPT / 1e9, 2),
                      source=source)


def measure_kernels(bandwidth: float, threads: int, progress: Callable[[str], None] = lambda s: None,
                    types: tuple[str, ...] = GGUF_TYPES, shape=None, source: str = "") -> dict[str, KernelRate]:
    """``"llama.cpp:TYPE"`` -> its measured rates on this machine."""
    from edgellm.models.families import from_config_dict
    from edgellm.runtime.llamacpp import LlamaCppModel
    from edgellm.runtime.synthetic_gguf import Shape, write

    shape = shape or Shape()
    model = from_config_dict(_probe_config(shape), "kernel probe")
    work = Path(tempfile.mkdtemp(prefix="edgellm-kernels-"))
    out = {}
    try:
        f16 = write(work / "probe-F16.gguf", shape)
        for quant in types:
            progress(f"measuring llama.cpp {quant} kernels")
            path = f16 if quant == "F16" else work / f"probe-{quant}.gguf"
            if quant != "F16":
                _quantize(f16, path, quant, threads)
            m = LlamaCppModel.open(path, n_ctx=PROMPT + GEN + 8, threads=threads)
            p = m.profile(PROMPT, GEN, REPEATS)
            del m
            out[f"llama.cpp:{quant}"] = rates_from(model, quant, p.prefill_tps, p.decode_tps, bandwidth, source)
            if path != f16:
                path.unlink()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out
