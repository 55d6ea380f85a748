"""Where a step of ``edgellm distill`` spends its GPU time (issue 31): torch.profiler over a few
steady steps of the real command's code path (``distill_student``; the profiler is started and
stopped from its progress callback), kernels grouped by what they do.

Usage: python benchmarks/distill_profile.py TEACHER [--params 1.5B] [--batch 8] [--seq 512]
                                            [--steps 12] [--profile 3] [--out trace.json]
                                            [--teacher-precision auto|bf16|fp8]
"""

from __future__ import annotations

import argparse
import gc
import json
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

# kernel name patterns -> what they are (first match wins); the rest is "other"
GROUPS = [("FP8 matrix products (teacher)", r"e4m3|f8f8|fp8|scaled_mm"),
          ("attention", r"flash|fmha|attention|sdpa|cudnn.*(mha|attn)"),
          ("optimizer (fused AdamW, clipping)", r"adam|multi_tensor|foreach|norm_kernel|_amp_"),
          ("bf16/fp32 matrix products", r"gemm|cutlass|xmma|sm90|cublas|matmul|splitk"),
          ("fused elementwise (compiled: triton)", r"^triton_"),
          ("copies", r"memcpy|memset|copy"),
          ("other elementwise and reductions", r"elementwise|reduce|vectorized|softmax|index|cat|fill")]
# ranges the profiler also draws on the GPU's timeline (they hold kernels counted on their own)
ANNOTATIONS = r"#|Torch-Compiled Region|CompiledFunction|ProfilerStep|autograd::engine"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("teacher", type=Path)
    ap.add_argument("--params", default="1.5B", help="the student's total parameters (e.g. 1.5B)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--profile", type=int, default=3, help="steady steps profiled (after step 6)")
    ap.add_argument("--out", type=Path, help="a Chrome trace of the profiled steps")
    ap.add_argument("--teacher-precision", default="auto")
    a = ap.parse_args()

    import torch
    from torch.profiler import ProfilerActivity, profile

    from edgellm.cli.distill_cmd import count_arg
    from edgellm.exporters.distill.student import StudentRequest, distill_student
    from edgellm.exporters.distill.train import DistillConfig

    first = 6
    state: dict = {"gc_s": 0.0, "gc_n": 0}

    def gc_timer(phase, info) -> None:        # Python's collector pausing the host during the profiled steps
        if "prof" not in state or "done" in state:
            return
        if phase == "start":
            state["gc_t"] = time.perf_counter()
        elif "gc_t" in state:
            state["gc_s"] += time.perf_counter() - state.pop("gc_t")
            state["gc_n"] += 1

    gc.callbacks.append(gc_timer)

    def progress(p) -> None:           # called as each step's loss is read (on a GPU: one step behind)
        if p.step == first:
            torch.cuda.synchronize()
            state["prof"] = profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA])
            state["prof"].__enter__()
        elif p.step == first + a.profile and "prof" in state:
            torch.cuda.synchronize()
            state["prof"].__exit__(None, None, None)
            state["done"] = True
        if p.steady_tokens_per_s:
            state["rate"] = p.steady_tokens_per_s

    cfg = DistillConfig(steps=max(a.steps, first + a.profile + 2), batch=a.batch, seq=a.seq, device="cuda",
                        teacher_precision=a.teacher_precision)
    out = Path(tempfile.mkdtemp(prefix="edgellm-distill-profile-")) / "student"
    try:
        r = distill_student(StudentRequest(a.teacher, out, cfg, params=count_arg(a.params)),
                            say=lambda s: print(s, flush=True), progress=progress)
    finally:
        shutil.rmtree(out.parent, ignore_errors=True)      # the student and its checkpoint: GBs
    prof = state["prof"]
    events = [e for e in prof.key_averages() if e.device_type.name == "CUDA" and not re.search(ANNOTATIONS, e.key)]
    total = sum(e.self_device_time_total for e in events)
    groups: dict[str, float] = {}
    for e in events:
        name = e.key.lower()
        group = next((g for g, pat in GROUPS if re.search(pat, name)), "other")
        groups[group] = groups.get(group, 0.0) + e.self_device_time_total
    steps = a.profile
    print(f"\nsetup: {({k: v for k, v in r.record['throughput'].items() if k != 'device'})}")
    print(f"GPU time per step over {steps} profiled steps: {total / steps / 1e3:.1f} ms "
          f"(wall per step at the steady rate: {a.batch * a.seq / state.get('rate', float('nan')) * 1e3:.1f} ms)")
    for g, t in sorted(groups.items(), key=lambda kv: -kv[1]):
        print(f"  {g:42s} {t / steps / 1e3:8.1f} ms  {t / total:6.1%}")
    print("\ntop kernels:")
    for e in sorted(events, key=lambda e: -e.self_device_time_total)[:15]:
        print(f"  {e.self_device_time_total / steps / 1e3:8.2f} ms  {e.count // steps:5d}x  {e.key[:110]}")
    trace = a.out or Path(tempfile.mkdtemp(prefix="edgellm-distill-trace-")) / "trace.json"
    prof.export_chrome_trace(str(trace))
    events = json.loads(trace.read_text())
    if a.out is None:
        shutil.rmtree(trace.parent, ignore_errors=True)   # hundreds of MB
    print(f"\nPython's garbage collector during the profiled steps: {state['gc_n']} collections, "
          f"{state['gc_s'] / steps * 1e3:.2f} ms a step")
    gaps(events, steps)
    return 0


def gaps(trace: dict, steps: int) -> None:
    """Where the GPU sat idle between the first and the last profiled kernel: the idle time by gap
    size, the largest gaps, and for each whether the next kernel was launched late (the host was
    behind) or early (the GPU waited on something else), with the host's op at its launch."""
    ev = trace.get("traceEvents", trace) if isinstance(trace, dict) else trace
    kernels = sorted((e for e in ev if e.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset") and "dur" in e),
                     key=lambda e: e["ts"])       # copies and fills keep the GPU busy too
    if not kernels:
        print("no kernels in the trace")
        return
    launches = {e["args"].get("correlation"): e for e in ev if e.get("cat") == "cuda_runtime" and "args" in e}
    ops = sorted((e for e in ev if e.get("cat") == "cpu_op" and "dur" in e), key=lambda e: e["ts"])
    syncs: dict[str, list] = {}
    for e in ev:
        if e.get("cat") == "cuda_runtime" and re.search(r"Synchronize|Memcpy(?!Async)|cudaFree|cudaMalloc", e.get("name", "")):
            s = syncs.setdefault(e["name"], [0, 0.0])
            s[0] += 1
            s[1] += e.get("dur", 0)
    found, end = [], kernels[0]["ts"] + kernels[0]["dur"]
    for k in kernels[1:]:
        if k["ts"] > end:
            found.append((k["ts"] - end, end, k))
        end = max(end, k["ts"] + k["dur"])
    span = end - kernels[0]["ts"]
    idle = sum(g for g, _, _ in found)
    print(f"\nGPU timeline over the profiled steps: {len(kernels) // steps} kernels and copies a step, "
          f"idle {idle / steps / 1e3:.2f} ms of {span / steps / 1e3:.1f} ms a step")
    for lo, hi in ((0, 5), (5, 20), (20, 200), (200, 2000), (2000, 1e12)):
        part = [g for g, _, _ in found if lo <= g < hi]
        print(f"  gaps {lo:>5}-{hi if hi < 1e12 else 'inf':>5} us: {len(part) // steps:6d} a step, "
              f"{sum(part) / steps / 1e3:7.2f} ms a step")
    for name, (n, t) in sorted(syncs.items(), key=lambda kv: -kv[1][1]):
        print(f"  host: {name} {n // steps} a step, {t / steps / 1e3:.2f} ms a step")
    print("largest gaps (us; 'late' = the next kernel was launched after the GPU went idle):")
    for g, start, k in sorted(found, key=lambda f: -f[0])[:10]:
        launch = launches.get(k.get("args", {}).get("correlation"))
        where, late = "?", float("nan")
        if launch is not None:
            late = launch["ts"] - start
            inner = [o for o in ops if o["ts"] <= launch["ts"] <= o["ts"] + o["dur"]]
            where = " < ".join(o["name"][:40] for o in sorted(inner, key=lambda o: o["dur"])[:3]) or "-"
        print(f"  {g:9.0f}  launch {late:+9.0f}  next {k['name'][:50]}  at {where}")


if __name__ == "__main__":
    sys.exit(main())
