"""Distillation throughput on 1 and N GPUs (issues 16 and 17), on the `device` tool's machine.

A random-weight teacher at a real size (``realsize_models.py``, default the Llama-3.1-8B shape:
cost does not depend on the values) and a pruned student of ``--params`` parameters; ``edgellm
distill --device cuda`` on one GPU, then ``--gpus N`` (torchrun, FSDP2 over NCCL), each for
``--steps`` steps; prints tokens/s (all and per GPU), the scaling against one GPU (issue 17's
target: >= 1.8x on 2) and the peak GPU memory each run reports.  Then an N-GPU run stopped after
its first checkpoint is resumed on one GPU (``--resume``; the checkpoint is torch's distributed
format, resharded on load) to the end.

With ``--gpus 1`` only the one-GPU run (issue 16's throughput and memory).

Usage: python benchmarks/distill_gpus.py [--teacher DIR | --shape llama-3.1-8b] [--params 1.5B] [--gpus 2]
                                        [--steps 20] [--batch 8] [--seq 512]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
HELPER = HERE.parent / "tests" / "distill_ranks_helper.py"      # the suite's torchrun entry, with its stop hook


def _distill(args: list[str], env: dict | None = None) -> dict:
    exe = Path(sys.executable).with_name("edgellm")
    r = subprocess.run([str(exe), "distill", *args, "--json"], capture_output=True, text=True,
                       env={**os.environ, **(env or {})})
    if r.returncode != 0:
        raise SystemExit(f"edgellm distill {' '.join(args)} failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout)


def _report(label: str, card: dict, gb: float) -> None:
    t = card["throughput"]
    print(f"{label:8s} {t['tokens_per_s']:10.0f} tok/s in all, {t['tokens_per_s_per_device']:8.0f} per GPU, "
          f"peak GPU memory (rank 0) {t['peak_gpu_bytes'] / gb:.1f} GB; student "
          f"{card['student']['parameters'] / 1e9:.2f} B parameters")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--teacher", type=Path)
    ap.add_argument("--shape", default="llama-3.1-8b")
    ap.add_argument("--params", default="1.5B")
    ap.add_argument("--gpus", type=int, default=2)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=512)
    a = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="edgellm-distill-gpus-"))
    teacher = a.teacher
    if teacher is None:
        sys.path.insert(0, str(HERE))
        from realsize_models import build
        teacher = build(a.shape, work / a.shape)
    common = [str(teacher), "--params", a.params, "--steps", str(a.steps), "--batch", str(a.batch), "--seq",
              str(a.seq), "--checkpoint-every", str(max(1, a.steps // 2)), "--force"]
    one = _distill([*common, "--device", "cuda", "-o", str(work / "one")])
    gb = 1e9
    if a.gpus < 2:                          # one GPU (issue 16): its throughput and memory only
        _report("1 GPU", one, gb)
        return 0
    many = _distill([*common, "--gpus", str(a.gpus), "-o", str(work / "many")])
    for label, card in (("1 GPU", one), (f"{a.gpus} GPUs", many)):
        _report(label, card, gb)
    ratio = many["throughput"]["tokens_per_s"] / one["throughput"]["tokens_per_s"]
    print(f"scaling {a.gpus} GPUs / 1: {ratio:.2f}x (target >= 1.8x on 2)")

    # stopped after the first checkpoint on N GPUs, resumed on one
    out = work / "resumed"
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
                        str(a.gpus), str(HELPER), "distill", *common, "--device", "cuda", "-o", str(out)],
                       capture_output=True, text=True, env={**os.environ,
                                                            "EDGELLM_TEST_STOP_AFTER": str(max(1, a.steps // 2))})
    if "--resume continues" not in r.stderr:
        raise SystemExit(f"the stopped {a.gpus}-GPU run did not stop as asked:\n{r.stderr[-3000:]}")
    card = _distill([*common, "--device", "cuda", "--resume", "-o", str(out)])
    print(f"resumed on 1 GPU from a {a.gpus}-GPU checkpoint at step {a.steps // 2}: ran to step {card['steps']}, "
          f"final loss {card['metrics']['final_loss']:.4f} (uninterrupted on {a.gpus} GPUs: "
          f"{many['metrics']['final_loss']:.4f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
