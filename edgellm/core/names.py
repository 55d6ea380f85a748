"""The names formats bring: what a device profile's ``runtimes``, ``[kernels]``,
``preferred_formats`` and accelerators' ``formats`` may name.  The built-in formats' names are here
from the start (a profile is read on the device, where the format registry may never be imported);
``plan/formats.register`` adds each new format's.  Ground floor: imports nothing."""

RUNTIME_NAMES: set[str] = {"llama.cpp", "onnxruntime"}
FORMAT_NAMES: set[str] = {"gguf", "onnx"}
# what a profile's [kernels] may key a runtime's per-type rates by, beside ggml's tensor types for
# llama.cpp: ONNX Runtime's matrix kernels per weight type (runtime/onnx_probe.py measures them)
KERNEL_TYPES: dict[str, frozenset[str]] = {
    "onnxruntime": frozenset({"fp32", "int8", "int4/16", "int4/32", "int4/64", "int4/128"})}
# llama.cpp's KV cache element types, as builds record them (formats/choice.py's KVCache) and as
# a profile keys the decode attention it measured per cache type (devices/kernels.py) -> their
# ggml type id (core/ggml.py: a quantized cache's blocks must divide a head)
KV_CACHE_TYPES: dict[str, int] = {"f16": 1, "q8_0": 8, "f32": 0}
