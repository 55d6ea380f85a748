"""Where a step of ``edgellm distill`` spends its GPU time (issue 31): torch.profiler over a few
steady steps of the real command's code path (``distill_student``; the profiler is started and
stopped from its progress callback), kernels grouped by what they do.

Usage: python benchmarks/distill_profile.py TEACHER [--params 1.5B] [--batch 8] [--seq 512]
                                            [--steps 12] [--profile 3] [--out trace.json]
                                            [--teacher-precision auto|bf16|fp8]
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
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
    state: dict = {}

    def progress(p) -> None:           # called as each step's loss is read (on a GPU: one step behind)
        if p.step == first:
            torch.cuda.synchronize()
            state["prof"] = profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA])
            state["prof"].__enter__()
        elif p.step == first + a.profile and "prof" in state:
            torch.cuda.synchronize()
            state["prof"].__exit__(None, None, None)
        if p.steady_tokens_per_s:
            state["rate"] = p.steady_tokens_per_s

    cfg = DistillConfig(steps=max(a.steps, first + a.profile + 2), batch=a.batch, seq=a.seq, device="cuda",
                        teacher_precision=a.teacher_precision)
    out = Path(tempfile.mkdtemp(prefix="edgellm-distill-profile-")) / "student"
    r = distill_student(StudentRequest(a.teacher, out, cfg, params=count_arg(a.params)), say=lambda s: print(s, flush=True),
                        progress=progress)
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
    if a.out:
        prof.export_chrome_trace(str(a.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
