"""The planner's speed predictions for this machine against the peers measured on it.

Measures this machine (as `edgellm device measure` does), plans a Qwen2.5-0.5B shape for it, and
prints predicted decode and prefill beside what llama.cpp (llama-bench, Q4_K_M) and
onnxruntime-genai (int4) measured on the same 2-core machine (edgellm shared/anchors.md).  The
kernel rates were calibrated on these two peers, so this checks the whole chain (measurement ->
profile -> roofline) on the machine, not an independent device.
Usage: python benchmarks/planner_vs_peers.py
"""

from __future__ import annotations

from edgellm import models
from edgellm.cli.progress import stderr_progress
from edgellm.devices.measure import measure
from edgellm.formats.choice import BuildChoice
from edgellm.plan.estimate import estimate

PEERS = {  # build -> (peer, decode tok/s, prefill tok/s), 2 threads, 2-core EPYC AVX2
    BuildChoice("gguf", "Q4_K_M", "f16"): ("llama.cpp llama-bench", 40.4, 125.0),
    BuildChoice("onnx", "int4", "f32", 32): ("onnxruntime-genai", 25.0, 94.0),
}


def main() -> None:
    prof, _ = measure("bench-host", stderr_progress)
    m = models.load_config("Qwen/Qwen2.5-0.5B-Instruct")
    print(f"{'build':14s} {'peer':24s} {'decode pred/peer':>18s} {'prefill pred/peer':>19s}")
    for choice, (peer, dec, pre) in PEERS.items():
        e = estimate(m, prof, choice, 4096)
        print(f"{choice.label:14s} {peer:24s} {e.decode_tps:6.1f}/{dec:5.1f} {e.decode_tps / dec:5.2f}x "
              f"{e.prefill_tps:6.1f}/{pre:5.1f} {e.prefill_tps / pre:5.2f}x")


if __name__ == "__main__":
    main()
