"""Build formats: each one a module that declares everything about itself (``base.BuildFormat``)
and joins the registry by decorator (``registry.register``).  The built-in ones are GGUF
(``gguf.py``) and ONNX with its NPU build (``onnx.py``); a format defined anywhere else registers
the same way.  This package stands on the ground floor only: ``plan/``, ``runtime/``,
``exporters/`` and the CLI read it, it reads none of them.
"""

from edgellm.formats.registry import (FORMATS, by_suffix, entry, expected_quality, format_for, formats_of, names,
                                      quant_names, register, resolved, unregister)
from edgellm.formats.choice import VERSION, BuildChoice, Format, GgufQuant, KVCache, OnnxQuant, Target
from edgellm.formats.base import F16_TOLERANCE, FP32_TOLERANCE, BuildFormat
from edgellm.formats.gguf import Gguf
from edgellm.formats.onnx import Onnx, OnnxNpu, int8_levels

__all__ = ["FORMATS", "VERSION", "BuildChoice", "BuildFormat", "F16_TOLERANCE", "FP32_TOLERANCE", "Format",
           "GgufQuant", "Gguf", "KVCache", "Onnx", "OnnxNpu", "OnnxQuant", "Target", "by_suffix", "entry",
           "expected_quality", "format_for", "formats_of", "int8_levels", "names", "quant_names", "register",
           "resolved", "unregister"]
