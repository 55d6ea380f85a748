"""Predicted GGUF file size against files llama.cpp actually wrote.

The reference files: llama.cpp's convert_hf_to_gguf.py (F16) and llama-quantize (Q4_K_M) on a
random-weight Qwen2.5-0.5B-shaped model with a locally trained tokenizer, measured 2026-11 on the
2-core dev machine (edgellm shared/anchors.md).  Target (issue 2): within 2%.
Usage: python benchmarks/gguf_size.py
"""

from __future__ import annotations

from edgellm import devices, models
from edgellm.formats.choice import BuildChoice
from edgellm.plan.estimate import estimate

REAL = {("Qwen/Qwen2.5-0.5B-Instruct", "F16"): 991_812_736,
        ("Qwen/Qwen2.5-0.5B-Instruct", "Q4_K_M"): 395_463_808}


def main() -> None:
    dev = devices.find("laptop-x86-16gb")
    print(f"{'model':30s} {'type':7s} {'llama.cpp B':>13s} {'predicted B':>13s} {'data only B':>13s} {'ratio':>7s}")
    for (hub_id, quant), real in REAL.items():
        m = models.load_config(hub_id)
        e = estimate(m, dev, BuildChoice("gguf", quant, "f16"), 4096)
        ratio = e.file_bytes / real
        print(f"{hub_id:30s} {quant:7s} {real:13,d} {e.file_bytes:13,d} {e.memory.weights:13,d} {ratio:7.4f}")


if __name__ == "__main__":
    main()
