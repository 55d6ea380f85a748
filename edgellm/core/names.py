"""The names formats bring: what a device profile's ``runtimes``, ``[kernels]``,
``preferred_formats`` and accelerators' ``formats`` may name.  The built-in formats' names are here
from the start (a profile is read on the device, where the format registry may never be imported);
``plan/formats.register`` adds each new format's.  Ground floor: imports nothing."""

RUNTIME_NAMES: set[str] = {"llama.cpp", "onnxruntime"}
FORMAT_NAMES: set[str] = {"gguf", "onnx"}
