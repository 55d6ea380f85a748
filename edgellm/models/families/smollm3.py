"""SmolLM3 (HuggingFaceTB): a llama layout in which every fourth layer attends without rotary
positions (NoPE: ``no_rope_layers[i] == 0``)."""

from __future__ import annotations

from edgellm.models.families.llama import Llama
from edgellm.models.families.registry import register

NOPE_STEP = 4      # llama.cpp's smollm3 skips rotary on every 4th layer (hparams.n_no_rope_layer_step)


@register
class SmolLM3(Llama):
    model_types = ("smollm3",)
    gguf_arch = "smollm3"
    supports = frozenset({"gguf", "onnx"})

    def rope_layers(self) -> list[bool]:
        flags = self.cfg.get("no_rope_layers")
        n = self.model.n_layers
        if not isinstance(flags, list) or len(flags) != n:
            step = self.cfg.get("no_rope_layer_interval") or NOPE_STEP
            return [(i + 1) % step != 0 for i in range(n)]
        return [bool(f) for f in flags]

    def rotary_layer(self, i: int) -> bool:
        return self.rope_layers()[i]

    def format_problem(self, fmt) -> str | None:
        if fmt.fixed_architectures:                  # llama.cpp's fixed smollm3 graph
            fixed = [(i + 1) % NOPE_STEP != 0 for i in range(self.model.n_layers)]
            if self.rope_layers() != fixed:
                return (f"{self.name}: llama.cpp's smollm3 drops rotary positions on every "
                        f"{NOPE_STEP}th layer; this model's no_rope_layers differ")
        if not fmt.windowed_cache and self.cfg.get("use_sliding_window"):
            return f"{self.name}: SmolLM3 with sliding-window layers is not supported by {fmt.key.upper()} export yet"
        return None
