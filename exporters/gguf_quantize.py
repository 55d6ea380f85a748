"""GGUF quantization with llama.cpp's own quantizer (``llama_cpp.llama_model_quantize``): the same
code and per-tensor recipes as ``llama-quantize``, so files match llama.cpp's type for type."""

from __future__ import annotations

import ctypes
from pathlib import Path

from edgellm.errors import EdgeLLMError
from edgellm.runtime.quiet import captured_stderr

# GGUF file type names -> llama_ftype constants (llama.h)
FTYPE_NAMES = {"F16": "LLAMA_FTYPE_MOSTLY_F16", "Q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0",
               "Q6_K": "LLAMA_FTYPE_MOSTLY_Q6_K", "Q5_K_M": "LLAMA_FTYPE_MOSTLY_Q5_K_M",
               "Q4_K_M": "LLAMA_FTYPE_MOSTLY_Q4_K_M", "Q4_0": "LLAMA_FTYPE_MOSTLY_Q4_0",
               "IQ4_XS": "LLAMA_FTYPE_MOSTLY_IQ4_XS", "Q3_K_M": "LLAMA_FTYPE_MOSTLY_Q3_K_M",
               "Q2_K": "LLAMA_FTYPE_MOSTLY_Q2_K"}


def quantize(src: Path, dst: Path, quant: str, threads: int) -> None:
    """Quantize the F16 GGUF ``src`` into ``dst`` as ``quant`` (the caller makes it atomic)."""
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, FTYPE_NAMES[quant])
    params.nthread = threads
    with captured_stderr() as said:
        rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    if rc != 0:
        last = [ln for ln in said[0].splitlines() if ln.strip()][-1:] or ["no message"]
        raise EdgeLLMError(f"llama.cpp's quantizer failed ({quant}, code {rc}): {last[0].strip()}")
