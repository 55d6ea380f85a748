"""Random-weight models at real sizes, for speed and memory benchmarks (cost does not depend on
the values).  Shapes from the bundled configs; bf16 safetensors as published checkpoints are; a
byte-level BPE tokenizer trained locally, the embedding padded to the real vocabulary size.

The weights are written a tensor at a time into shards of about 2 GB (the model is built on
PyTorch's meta device for its names and shapes), so an 8B shape (16 GB of bf16) is made on a
machine with less memory than that: matrices N(0, initializer_range²), norm scales one, biases
zero.  ``edgellm-benchmark.json`` is written last: a folder without it is incomplete.

Usage: python benchmarks/realsize_models.py qwen2.5-0.5b|gemma-3-270m|llama-3.2-1b|llama-3.1-8b|qwen3-moe-small OUT_DIR
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

SHAPES = {"qwen2.5-0.5b": "Qwen/Qwen2.5-0.5B-Instruct", "gemma-3-270m": "google/gemma-3-270m-it",
          "llama-3.2-1b": "meta-llama/Llama-3.2-1B-Instruct",
          "llama-3.1-8b": "meta-llama/Llama-3.1-8B-Instruct",
          "qwen3-moe-small": "Qwen/Qwen3-30B-A3B"}
# shapes cut down from their bundled config: a small mixture of experts (2.6 B parameters, 0.8 B
# active: Qwen3-30B-A3B's layers with 12 of 48 layers and 32 of 128 experts, 4 per token)
OVERRIDES = {"qwen3-moe-small": {"num_hidden_layers": 12, "num_experts": 32, "num_experts_per_tok": 4}}
SHARD_BYTES = 2 << 30
MARKER = "edgellm-benchmark.json"


def _as_published(named):
    """(name, parameter) with transformers 5's stacked experts ([experts, 2 x ffn, hidden] gate|up,
    [experts, hidden, ffn] down) written one tensor per expert, as the hub's checkpoints are."""
    for name, p in named:
        if name.endswith(("experts.gate_up_proj", "experts.down_proj")):
            prefix, part = name.rsplit(".", 1)
            for e in range(p.shape[0]):
                if part == "down_proj":
                    yield f"{prefix}.{e}.down_proj.weight", p[e]
                else:
                    half = p.shape[1] // 2
                    yield f"{prefix}.{e}.gate_proj.weight", p[e, :half]
                    yield f"{prefix}.{e}.up_proj.weight", p[e, half:]
        else:
            yield name, p


def build(kind: str, out: Path) -> Path:
    import torch
    from safetensors.torch import save_file
    from transformers import AutoConfig, AutoModelForCausalLM

    from edgellm.exporters.demo_models import train_tokenizer
    from edgellm.models import load_config

    if (out / MARKER).is_file() or (out / "model.safetensors").is_file():     # (older builds had no marker)
        return out
    out.mkdir(parents=True, exist_ok=True)
    raw = {**load_config(SHAPES[kind]).raw, **OVERRIDES.get(kind, {})}
    tok = train_tokenizer(vocab_size=4096, limit_bytes=2 << 20)
    raw.update(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, torch_dtype="bfloat16")
    cfg = AutoConfig.for_model(**raw)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
    params = list(_as_published(model.named_parameters()))  # a tied head is listed once, as the embedding
    std = float(getattr(cfg, "initializer_range", 0.02) or 0.02)
    gen = torch.Generator().manual_seed(0)
    shards: list[list[tuple[str, tuple]]] = [[]]
    size = 0
    for name, p in params:
        nbytes = p.numel() * 2
        if shards[-1] and size + nbytes > SHARD_BYTES:
            shards.append([])
            size = 0
        shards[-1].append((name, tuple(p.shape)))
        size += nbytes
    weight_map, total = {}, 0
    for k, shard in enumerate(shards):
        fname = f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors"
        tensors = {}
        for name, shape in shard:
            if len(shape) >= 2:
                t = torch.empty(shape, dtype=torch.float32).normal_(0.0, std, generator=gen).to(torch.bfloat16)
            else:
                t = (torch.zeros if name.endswith("bias") else torch.ones)(shape, dtype=torch.bfloat16)
            tensors[name] = t
            weight_map[name] = fname
            total += t.numel() * 2
        save_file(tensors, str(out / fname), metadata={"format": "pt"})
        print(f"{fname}: {len(tensors)} tensors", flush=True)
        del tensors
    (out / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {"total_size": total}, "weight_map": weight_map}, indent=1))
    cfg.save_pretrained(out)
    tok.save_pretrained(out)
    (out / MARKER).write_text(json.dumps({"shape_of": SHAPES[kind], "weights": "random"}))
    return out


if __name__ == "__main__":
    print(build(sys.argv[1], Path(sys.argv[2])))
