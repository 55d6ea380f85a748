"""``Family``: everything edgellm knows about one model family, in one class.  Each family module
(llama.py, qwen.py, phi3.py, gemma.py, gpt2.py, ...) declares its classes once with ``@register``;
the planner, the GGUF writer, the ONNX graphs and pruning all read the same class."""

from __future__ import annotations

from edgellm.models.families.gguf_hooks import GgufHooks
from edgellm.models.families.onnx_hooks import OnnxHooks
from edgellm.models.families.shape import Shape


class Family(Shape, GgufHooks, OnnxHooks):
    """A llama-style decoder: RMSNorm, rotary attention (GQA), gated SiLU MLP."""
