"""Distillation target: a student with 25% of the teacher's non-embedding parameters, pruned from
the teacher and distilled, against the same shape trained from random initialisation with plain
next-token loss, on the same tokens; both against the teacher.

Teacher: the ``bench`` reference model.  Held-out perplexity on windows of 512 tokens of the
held-out text.  The GPU machine has PyTorch and transformers but not edgellm, and takes at most
64 MB in, so the work is split:

  python benchmarks/distill.py prepare                  # here: token ids -> .refwork/distill/
  python3 benchmarks/distill.py run SHARDS --device cuda   # there (SHARDS: reference_gpu.py's output)
  python benchmarks/distill.py run --device cpu --steps 5  # here: CPU throughput (teacher from the cache)
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
WORK = HERE.parent / ".refwork"


def _edgellm():
    """edgellm from this checkout without installing it (the GPU machine has no install)."""
    try:
        import edgellm.exporters  # noqa: F401
    except ImportError:
        sys.path.insert(0, str(HERE.parent))
        import edgellm
        edgellm.__path__.append(str(HERE.parent))       # runtime/, exporters/ as edgellm.*


def prepare(train_tokens: int = 6_000_000) -> None:
    import numpy as np

    from edgellm.textdata import held_out_text
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(WORK / "model")
    out = WORK / "distill"
    out.mkdir(parents=True, exist_ok=True)
    np.save(out / "train.npy", np.load(WORK / "ids.npy")[:train_tokens])
    np.save(out / "held.npy", np.asarray(tok.encode(held_out_text(), add_special_tokens=False), dtype=np.uint16))
    print(f"prepared {out}")


def _teacher(shards: Path | None):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    if shards is None:
        from edgellm.exporters.reference_model import SPECS, cache_root
        return AutoModelForCausalLM.from_pretrained(cache_root() / "reference" / SPECS["bench"].cache_name,
                                                    dtype=torch.float32)
    from safetensors.torch import load_file
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(WORK / "model"), dtype=torch.float32)
    state = {}
    for f in sorted(shards.glob("shard-*.safetensors")):
        state.update({k: v.float() for k, v in load_file(str(f)).items()})
    model.load_state_dict(state, strict=False)
    model.tie_weights()
    return model


def perplexity(model, held, device: str, seq: int = 512, windows: int = 32) -> float:
    import torch

    model.to(device).eval()
    nll, n = 0.0, 0
    with torch.no_grad():
        for i in range(min(windows, len(held) // seq)):
            x = torch.as_tensor(held[i * seq:(i + 1) * seq].astype("int64"))[None].to(device)
            loss = model(input_ids=x, labels=x).loss
            nll += loss.item() * (seq - 1)
            n += seq - 1
    return math.exp(nll / n)


def run(shards: Path | None, device: str, steps: int, batch: int, lr: float) -> dict:
    import dataclasses

    import numpy as np
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    _edgellm()
    from edgellm.exporters.distill import prune
    from edgellm.exporters.distill.train import DistillConfig, train

    teacher = _teacher(shards)
    train_ids = np.load(WORK / "distill" / "train.npy") if shards else np.load(WORK / "ids.npy")
    held = np.load(WORK / "distill" / "held.npy") if shards else None
    shape = prune.student_shape(teacher.config.to_dict() | {"model_type": "llama"}, "llama", "bench", size=0.25)
    cfg = DistillConfig(steps=steps, batch=batch, seq=512, lr=lr, device=device, checkpoint_every=10**9)
    work = Path("/tmp/edgellm-distill-bench")
    work.mkdir(parents=True, exist_ok=True)
    res = {"device": device, "steps": steps, "tokens": cfg.tokens, "student_shape": {
        k: shape[k] for k in ("num_hidden_layers", "hidden_size", "intermediate_size", "num_attention_heads",
                              "num_key_value_heads")}}
    teacher.to(device)
    if held is not None:
        res["teacher_ppl"] = perplexity(teacher, held, device)
    t = time.perf_counter()
    windows = [train_ids[i:i + 512].astype("int64").tolist() for i in range(0, 16 * 512, 512)]
    imp = prune.measure(teacher, windows)
    student, keep_h, _ = prune.prune(teacher.to("cpu"), AutoConfig.for_model(**shape), imp)
    res["prune_seconds"] = round(time.perf_counter() - t, 1)
    n_params = sum(p.numel() for p in student.parameters())
    emb = student.config.vocab_size * student.config.hidden_size
    t_emb = teacher.config.vocab_size * teacher.config.hidden_size
    res["share_non_embedding"] = (n_params - emb) / (sum(p.numel() for p in teacher.parameters()) - t_emb)
    teacher.to(device)
    arms = {"pruned+distilled": (student, teacher, cfg)}
    torch.manual_seed(cfg.seed)
    for blr in (lr, 2 * lr):
        scratch = AutoModelForCausalLM.from_config(AutoConfig.for_model(**shape), dtype=torch.float32)
        arms[f"random init, next-token loss, lr {blr:g}"] = (scratch, None, dataclasses.replace(cfg, baseline=True, lr=blr))
    for name, (model, t_model, c) in arms.items():
        t = time.perf_counter()
        losses = train(model, t_model, train_ids, c, work, keep_h)
        secs = time.perf_counter() - t
        row = {"seconds": round(secs, 1), "tokens_per_s": round(c.tokens / secs), "first_loss": losses[0],
               "final_loss": float(np.mean(losses[-20:]))}
        if held is not None:
            row["held_out_ppl"] = perplexity(model, held, device)
        res[name] = row
        print(name, json.dumps(row), flush=True)
    if held is not None:
        base = min(v["held_out_ppl"] for k, v in res.items() if k.startswith("random init"))
        res["ratio_distilled_vs_scratch"] = res["pruned+distilled"]["held_out_ppl"] / base
    print(json.dumps(res, indent=1))
    return res


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("cmd", choices=("prepare", "run"))
    ap.add_argument("shards", nargs="?", type=Path)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    if a.cmd == "prepare":
        prepare()
    else:
        r = run(a.shards, a.device, a.steps, a.batch, a.lr)
        if a.json:
            a.json.write_text(json.dumps(r, indent=1))
