"""Random-weight models at real sizes, for speed and memory benchmarks (cost does not depend on
the values).  Shapes from the bundled configs; bf16 safetensors as published checkpoints are; a
byte-level BPE tokenizer trained locally, the embedding padded to the real vocabulary size.

Usage: python benchmarks/realsize_models.py qwen2.5-0.5b|llama-3.2-1b OUT_DIR
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

SHAPES = {"qwen2.5-0.5b": "Qwen/Qwen2.5-0.5B-Instruct", "llama-3.2-1b": "meta-llama/Llama-3.2-1B-Instruct"}


def build(kind: str, out: Path) -> Path:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from edgellm.exporters.demo_models import train_tokenizer
    from edgellm.models import load_config

    if (out / "model.safetensors").is_file():
        return out
    raw = dict(load_config(SHAPES[kind]).raw)
    tok = train_tokenizer(vocab_size=4096, limit_bytes=2 << 20)
    raw.update(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, torch_dtype="bfloat16")
    cfg = AutoConfig.for_model(**raw)
    torch.manual_seed(0)
    with torch.device("cpu"):
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    (out / "edgellm-benchmark.json").write_text(json.dumps({"shape_of": SHAPES[kind], "weights": "random"}))
    return out


if __name__ == "__main__":
    print(build(sys.argv[1], Path(sys.argv[2])))
