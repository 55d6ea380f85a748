"""The reference distillation loop of issue 31: what a user writes in an afternoon with
transformers and torch alone, measured beside ``edgellm distill`` by ``distill_gpus.py``.

- teacher: bfloat16 weights, under ``no_grad``;
- student: float32 weights under bfloat16 autocast; AdamW (fused on a GPU), no clipping;
- ``--loop compiled`` (the default): ``torch.compile`` on both models' decoders, and the loss
  KL(teacher ‖ student) computed from the two final hidden states over chunks of 1,024 tokens,
  each chunk's two heads applied inside ``torch.utils.checkpoint`` (no full logits);
  ``--loop plain``: eager, full logits, KL over the vocabulary in float32.

Speed (the default): random token batches, ``--warmup`` steps then ``--steps`` timed with CUDA
events; prints one JSON line (tokens/s, peak GPU memory).  ``--data IDS.npy`` (quality): batches
drawn from those token ids by the same seeded generator and with the same learning-rate schedule
as ``edgellm distill`` (so both arms see the same data in the same order), all steps counted,
and the trained student saved to ``--save``.

Usage: python benchmarks/distill_reference.py TEACHER STUDENT_DIR [--loop compiled|plain]
           [--batch 8] [--seq 512] [--steps 12] [--warmup 3] [--data IDS.npy --lr 1e-3 --save DIR]
STUDENT_DIR: a student folder (its config.json; with --data also its weights: the pruned start).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import AutoConfig, AutoModelForCausalLM

CHUNK = 1024


def chunk_kl(h, w, th, tw):
    """Summed KL(teacher ‖ student) over one chunk of tokens, both heads applied here."""
    s = F.log_softmax((h @ w.t()).float(), -1)
    t = F.log_softmax((th @ tw.t()).float(), -1)
    return (t.exp() * (t - s)).sum()


def lr_at(step: int, steps: int, lr: float) -> float:
    """edgellm distill's own schedule (warm-up, cosine to a tenth), so quality runs compare loops,
    not schedules; the loop itself is torch and transformers alone."""
    from edgellm.exporters.distill.train import DistillConfig, _lr

    return _lr(DistillConfig(steps=steps, lr=lr), step)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("teacher", type=Path)
    ap.add_argument("student", type=Path)
    ap.add_argument("--loop", choices=("compiled", "plain"), default="compiled")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--data", type=Path)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--save", type=Path)
    a = ap.parse_args()
    dev = "cuda"
    torch.manual_seed(a.seed)

    teacher = AutoModelForCausalLM.from_pretrained(a.teacher, dtype=torch.bfloat16).to(dev).eval()
    teacher.requires_grad_(False)
    if a.data is not None:
        student = AutoModelForCausalLM.from_pretrained(a.student, dtype=torch.float32).to(dev)
    else:
        student = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(a.student), dtype=torch.float32).to(dev)
    student.train()
    compiled = a.loop == "compiled"
    if compiled:
        teacher.model.compile(dynamic=False)
        student.model.compile(dynamic=False)
    kl = torch.compile(chunk_kl, dynamic=False) if compiled else chunk_kl
    opt = torch.optim.AdamW(student.parameters(), lr=a.lr, weight_decay=0.01, betas=(0.9, 0.95), fused=True)
    vocab = teacher.config.vocab_size
    sw, tw = student.get_output_embeddings().weight, teacher.get_output_embeddings().weight

    if a.data is not None:
        import numpy as np
        data = torch.as_tensor(np.load(a.data).astype("int64"))
        gen = torch.Generator().manual_seed(a.seed)
        total = a.steps

        def batch():
            starts = torch.randint(0, len(data) - a.seq - 1, (a.batch,), generator=gen)
            return torch.stack([data[s:s + a.seq] for s in starts]).to(dev, non_blocking=True)
    else:
        total = a.warmup + a.steps

        def batch():
            return torch.randint(0, vocab, (a.batch, a.seq), device=dev)

    def step(i: int) -> torch.Tensor:
        for g in opt.param_groups:
            g["lr"] = lr_at(i, total, a.lr)
        x = batch()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            with torch.no_grad():
                if compiled:
                    th = teacher.model(input_ids=x, use_cache=False).last_hidden_state.reshape(-1, tw.shape[1])
                else:
                    tl = teacher(input_ids=x, use_cache=False).logits.float()
            if compiled:
                h = student.model(input_ids=x, use_cache=False).last_hidden_state.reshape(-1, sw.shape[1])
                loss = sum(torch.utils.checkpoint.checkpoint(kl, h[i:i + CHUNK], sw, th[i:i + CHUNK], tw,
                                                             use_reentrant=False)
                           for i in range(0, h.shape[0], CHUNK)) / h.shape[0]
            else:
                s = F.log_softmax(student(input_ids=x, use_cache=False).logits.float(), -1)
                t = F.log_softmax(tl, -1)
                loss = (t.exp() * (t - s)).sum(-1).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss

    losses = []
    warm = 0 if a.data is not None else a.warmup
    for i in range(warm):
        losses.append(step(i))
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    t0 = time.perf_counter()
    begin.record()
    for i in range(warm, total):
        losses.append(step(i))
    end.record()
    torch.cuda.synchronize()
    seconds = begin.elapsed_time(end) / 1000
    out = {"loop": a.loop, "tokens_per_s": (total - warm) * a.batch * a.seq / seconds,
           "wall_s": time.perf_counter() - t0, "peak_gpu_bytes": torch.cuda.max_memory_allocated(),
           "peak_gpu_reserved_bytes": torch.cuda.max_memory_reserved(),
           "steps": total, "timed_steps": total - warm, "first_loss": float(losses[0]),
           "final_loss": float(sum(float(v) for v in losses[-10:]) / len(losses[-10:])),
           "gpu": torch.cuda.get_device_name(), "torch": torch.__version__}
    if a.save is not None:
        student.save_pretrained(a.save, safe_serialization=True)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
