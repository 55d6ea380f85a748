"""Distillation throughput on 1 and N GPUs (issues 16 and 17), on the `device` tool's machine.

A random-weight teacher at a real size (``realsize_models.py``, default the Llama-3.1-8B shape:
cost does not depend on the values) and a pruned student of ``--params`` parameters; ``edgellm
distill --device cuda`` on one GPU, then ``--gpus N`` (torchrun, FSDP2 over NCCL), each for
``--steps`` steps; prints tokens/s (all and per GPU), the scaling against one GPU (issue 17's
target: >= 1.8x on 2) and the peak GPU memory each run reports.  Then an N-GPU run stopped after
its first checkpoint is resumed on one GPU (``--resume``; the checkpoint is torch's distributed
format, resharded on load) to the end.

With ``--gpus 1`` (issue 31) the one-GPU run (by default a checkpoint every ``--steps // 2`` steps,
so one written on the way is inside the timed steps: the default interval, 10 minutes, would not
checkpoint in so short a run; ``--checkpoint-steps``, ``--teacher-precision``) and, each in a
process of its own on the same teacher, student shape and batch, the reference loops of
``distill_reference.py`` (``--loops compiled,plain``); prints tokens/s, peak GPU memory and
edgellm's ratio to the compiled reference (target: >= 1.1x, <= 45 GB).

``--quality`` (issue 31, item 3): a trained teacher (``--teacher``, e.g. the ``bench`` reference
model), one fixed token budget, the same training text and seed for every arm: edgellm distill
now, an older edgellm (``--old-root``: a checkout of it) and the compiled reference loop started
from the same pruned student; the held-out perplexity of each student (one evaluation for all).

Usage: python benchmarks/distill_gpus.py [--teacher DIR | --shape llama-3.1-8b] [--params 1.5B] [--gpus 2]
                                        [--steps 20] [--batch 8] [--seq 512] [--loops compiled,plain]
       python benchmarks/distill_gpus.py --quality --teacher DIR [--size 0.25] [--steps 300] [--batch 16]
                                        [--old-root DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
HELPER = HERE.parent / "tests" / "distill_ranks_helper.py"      # the suite's torchrun entry, with its stop hook


# an older checkout's edgellm, run from its folder (its exporters/ and runtime/ as edgellm.*)
OLD = ("import sys; root = sys.argv.pop(1); sys.path.insert(0, root); import edgellm; "
       "edgellm.__path__.append(root); from edgellm.cli import main; sys.exit(main(sys.argv[1:]))")


def _distill(args: list[str], env: dict | None = None, root: Path | None = None) -> dict:
    cmd = [str(Path(sys.executable).with_name("edgellm"))] if root is None else [sys.executable, "-c", OLD, str(root)]
    r = subprocess.run([*cmd, "distill", *args, "--json"], capture_output=True, text=True,
                       env={**os.environ, **(env or {})})
    if r.returncode != 0:
        raise SystemExit(f"edgellm distill {' '.join(args)} failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout)


def _reference(args: list[str]) -> dict:
    r = subprocess.run([sys.executable, str(HERE / "distill_reference.py"), *args], capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"distill_reference.py {' '.join(args)} failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def _one_gpu(a, teacher: Path, work: Path) -> int:
    """Issue 31: edgellm distill on one GPU against the reference loops, same shapes and batch."""
    gb = 1e9
    common = [str(teacher), "--params", a.params, "--steps", str(a.steps), "--batch", str(a.batch), "--seq",
              str(a.seq), "--device", "cuda", "--force"]
    rows = []
    every = a.checkpoint_steps if a.checkpoint_steps is not None else max(1, a.steps // 2)
    for precision in a.teacher_precision.split(","):
        label = f"edgellm distill, teacher {precision}, " + \
            (f"a checkpoint every {every} steps" if every else "checkpoints every 10 minutes")
        card = _distill([*common, "--teacher-precision", precision,
                         *(["--checkpoint-every", str(every)] if every else []), "-o", str(work / "one")])
        t = card["throughput"]
        if t.get("teacher_precision") != precision:
            label += f" (ran {t.get('teacher_precision')})"
        rows.append((label, t["tokens_per_s"], t["peak_gpu_bytes"], t.get("peak_gpu_reserved_bytes") or 0))
        print(f"edgellm: {json.dumps(t)}", flush=True)
    student = work / "one"
    for loop in filter(None, a.loops.split(",")):
        r = _reference([str(teacher), str(student), "--loop", loop, "--batch", str(a.batch), "--seq", str(a.seq)])
        rows.append((f"reference loop, {loop}", r["tokens_per_s"], r["peak_gpu_bytes"], r.get("peak_gpu_reserved_bytes") or 0))
        print(f"reference {loop}: {json.dumps(r)}", flush=True)
    ref = next((r for r in rows if r[0] == "reference loop, compiled"), None)
    print(f"\n{'run':72s} {'tokens/s':>10s} {'peak GB':>8s} {'reserved':>9s} {'x compiled ref':>15s}")
    for label, rate, peak, held in rows:
        ratio = f"{rate / ref[1]:.2f}" if ref else "-"
        print(f"{label:72s} {rate:10.0f} {peak / gb:8.1f} {held / gb:9.1f} {ratio:>15s}")
    print("target: edgellm >= 1.1x the compiled reference, peak <= 45 GB (peak: tensors allocated, as "
          "torch.cuda.max_memory_allocated; reserved: with the allocator's cache)")
    return 0


def _quality(a, work: Path) -> int:
    """Issue 31, item 3: held-out perplexity after one token budget, same text and seed, per loop."""
    import numpy as np
    from transformers import AutoTokenizer

    from edgellm.textdata import training_text

    text = work / "train.txt"
    text.write_text(training_text(max(1 << 20, 8 * a.steps * a.batch * a.seq)), encoding="utf-8")
    tok = AutoTokenizer.from_pretrained(a.teacher)
    ids = work / "ids.npy"
    np.save(ids, np.asarray(tok.encode(text.read_text(encoding="utf-8"), add_special_tokens=False), dtype=np.int64))
    common = [str(a.teacher), "--size", str(a.size), "--batch", str(a.batch), "--seq", str(a.seq), "--data",
              str(text), "--device", "cuda", "--seed", "0", "--force"]
    # the pruned start alone: one step at a learning rate too small to move a float32 weight
    _distill([*common, "--steps", "1", "--lr", "1e-30", "--no-compile", "--teacher-precision", "bf16", "-o",
              str(work / "init")])
    arms = {"edgellm distill now": work / "new", "reference loop, compiled": work / "ref"}
    card = _distill([*common, "--steps", str(a.steps), "-o", str(arms["edgellm distill now"])])
    print(f"now: {json.dumps(card['throughput'])}", flush=True)
    if a.old_root is not None:
        arms[f"edgellm distill at {a.old_root.name}"] = work / "old"
        _distill([*common, "--steps", str(a.steps), "-o", str(work / "old")], root=a.old_root)
    r = _reference([str(a.teacher), str(work / "init"), "--data", str(ids), "--steps", str(a.steps), "--batch",
                    str(a.batch), "--seq", str(a.seq), "--save", str(arms["reference loop, compiled"])])
    print(f"reference: {json.dumps(r)}", flush=True)
    ppl = {label: _perplexity(folder, a.teacher, a.seq) for label, folder in [("pruned start", work / "init"),
                                                                               *arms.items()]}
    print(f"\n{a.steps} steps of {a.batch} x {a.seq} tokens ({a.steps * a.batch * a.seq:,}), seed 0; held-out "
          f"perplexity over 32 windows of {min(a.seq, 512)} tokens:")
    for label, value in ppl.items():
        print(f"  {label:40s} {value:8.3f}")
    return 0


def _perplexity(folder: Path, teacher: Path, seq: int) -> float:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from edgellm.exporters.verify.evaluate import HFScorer, evaluate
    from edgellm.textdata import held_out_text

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).to("cuda").eval()
    return evaluate(HFScorer(AutoTokenizer.from_pretrained(teacher), model, folder.name), held_out_text(),
                    min(seq, 512), 32).perplexity


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
    ap.add_argument("--loops", default="compiled,plain", help="the reference loops beside --gpus 1")
    ap.add_argument("--teacher-precision", default="auto,fp8", help="edgellm distill's, beside --gpus 1, one run "
                    "each (a random teacher measures far from itself in FP8, so auto keeps it bf16: fp8 times "
                    "the FP8 path)")
    ap.add_argument("--checkpoint-steps", type=int, help="beside --gpus 1: a checkpoint every N steps, inside "
                    "the timing (default --steps // 2; 0: the default interval, 10 minutes)")
    ap.add_argument("--quality", action="store_true", help="held-out perplexity per loop (needs --teacher)")
    ap.add_argument("--size", type=float, default=0.25)
    ap.add_argument("--old-root", type=Path, help="with --quality: an older edgellm checkout to compare")
    a = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="edgellm-distill-gpus-"))
    try:                                    # students, checkpoints, a built teacher: tens of GB
        return _run(a, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _run(a, work: Path) -> int:
    if a.quality:
        if a.teacher is None:
            raise SystemExit("--quality needs --teacher (a trained model: a random one has no perplexity to keep)")
        return _quality(a, work)
    teacher = a.teacher
    if teacher is None:
        sys.path.insert(0, str(HERE))
        from realsize_models import build
        teacher = build(a.shape, work / a.shape)
    if a.gpus < 2:                          # one GPU (issue 31): against the reference loops
        return _one_gpu(a, teacher, work)
    common = [str(teacher), "--params", a.params, "--steps", str(a.steps), "--batch", str(a.batch), "--seq",
              str(a.seq), "--checkpoint-every", str(max(1, a.steps // 2)), "--force"]
    one = _distill([*common, "--device", "cuda", "-o", str(work / "one")])
    gb = 1e9
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
