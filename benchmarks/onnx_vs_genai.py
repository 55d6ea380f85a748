"""ONNX int4 export and runtime against onnxruntime-genai's model builder and generator, same run.

- export: `edgellm export --format onnx --quant int4 --block-size 32 --no-verify` vs
  `python -m onnxruntime_genai.models.builder -i MODEL -p int4 -e cpu` (wall, peak RSS, file size);
- runtime: `edgellm profile` vs genai's Generator on the builder's model: prefill of a 128-token
  prompt (one call), then 64 greedy tokens one at a time; same thread count; best of interleaved
  rounds, each a median of 3.

onnxruntime-genai's builder needs transformers 5 (edgellm pins 4.57 for optimum-onnx), so the peer
runs from its own virtual environment:
  python -m venv GENAI_VENV && GENAI_VENV/bin/pip install torch==2.13.0 && \\
  GENAI_VENV/bin/pip install onnxruntime-genai onnx-ir transformers onnx
Usage: python benchmarks/onnx_vs_genai.py GENAI_VENV WORK_DIR [qwen2.5-0.5b|llama-3.2-1b] [--threads N]
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

from peer_run import EDGELLM, parse_args, timed

GENAI_PROFILE = r"""
import json, statistics, sys, time
import onnxruntime_genai as og
folder, threads, n_prompt, n_gen = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
cfg = og.Config(folder)
cfg.clear_providers()
model = og.Model(cfg)
prompt = [(i * 7919) % 3000 + 10 for i in range(n_prompt)]
def once():
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=n_prompt + n_gen + 1, do_sample=False)
    g = og.Generator(model, params)
    t0 = time.perf_counter(); g.append_tokens(prompt); t1 = time.perf_counter()
    for _ in range(n_gen):
        g.generate_next_token()
    t2 = time.perf_counter()
    return n_prompt / (t1 - t0), n_gen / (t2 - t1)
once()
runs = [once() for _ in range(3)]
print(json.dumps({"prefill": statistics.median(r[0] for r in runs), "decode": statistics.median(r[1] for r in runs)}))
"""


def onnx_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.iterdir() if p.name.endswith((".onnx", ".onnx.data")))


def main() -> None:
    a, model = parse_args("genai_venv")
    gpy = str(a.genai_venv / "bin" / "python")
    ours, peer = a.work / f"{a.shape}-onnx-ours", a.work / f"{a.shape}-onnx-genai"
    for d in (ours, peer):
        shutil.rmtree(d, ignore_errors=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(a.threads)}

    t_ours, m_ours = timed([EDGELLM, "export", str(model), "--device", "laptop-x86-16gb", "--format", "onnx",
                            "--quant", "int4", "--block-size", "32", "--no-verify", "--threads", str(a.threads),
                            "-o", str(ours)], a.work / "onnx-ours.log", env)
    t_peer, m_peer = timed([gpy, "-m", "onnxruntime_genai.models.builder", "-i", str(model), "-o", str(peer),
                            "-p", "int4", "-e", "cpu", "-c", str(a.work / "genai-cache")], a.work / "onnx-genai.log", env)
    s_ours, s_peer = onnx_bytes(ours), onnx_bytes(peer)
    print(f"## {a.shape}: HF (bf16 safetensors) -> ONNX int4 (block 32), {a.threads} threads")
    print(f"edgellm export          {t_ours:6.1f} s  peak RSS {m_ours / 2**20:6.0f} MiB  {s_ours:,} B")
    print(f"genai model builder     {t_peer:6.1f} s  peak RSS {m_peer / 2**20:6.0f} MiB  {s_peer:,} B")
    print(f"ratio                   {t_ours / t_peer:.2f}x wall   {m_ours / m_peer:.2f}x RSS (target <= 0.5)   "
          f"size {s_ours / s_peer:.3f}x (target within 5%)")

    best = {"ours": [0.0, 0.0], "peer": [0.0, 0.0]}
    for _ in range(3):
        out = subprocess.run([gpy, "-c", GENAI_PROFILE, str(peer), str(a.threads), "128", "64"], check=True,
                             capture_output=True, text=True, env=env).stdout
        r = json.loads(out.strip().splitlines()[-1])
        best["peer"] = [max(best["peer"][0], r["prefill"]), max(best["peer"][1], r["decode"])]
        r = json.loads(subprocess.run([EDGELLM, "profile", str(ours), "--threads", str(a.threads), "--prompt-tokens",
                                       "128", "--gen-tokens", "64", "--repeats", "3", "--json"], check=True,
                                      capture_output=True, text=True, env=env).stdout)[0]["edgellm"]["measured"]
        best["ours"] = [max(best["ours"][0], r["prefill_tps"]), max(best["ours"][1], r["decode_tps"])]
    (po, do), (pp, dp) = best["ours"], best["peer"]
    print(f"## runtime, {a.threads} threads: prefill of 128 tokens, then 64 greedy tokens; best of 3 interleaved rounds, each a median of 3")
    print(f"genai Generator         prefill {pp:7.1f} tok/s  decode {dp:5.1f} tok/s")
    print(f"edgellm profile         prefill {po:7.1f} tok/s  decode {do:5.1f} tok/s")
    print(f"ratio                   prefill {po / pp:6.2f}x        decode {do / dp:.2f}x (targets >= 1.0)")


if __name__ == "__main__":
    main()
