"""A calibrated GGUF export's wall time against llama.cpp's importance-matrix route, same model,
text, windows and threads, measured in one run (issue 27: the whole `edgellm export --calibrate`
at most 2x `llama-imatrix` + `llama-quantize`).

The peer: `llama-imatrix` over the text in windows of 512 tokens (`-c 512 --chunks N`) on the
model's F16 GGUF and, where `llama-quantize` can make one, its BF16 GGUF (ggml multiplies bfloat16
natively on CPUs with AVX512-BF16); the faster of the two, then `llama-quantize` to Q4_K_M with
that importance matrix.  The F16 GGUF both need is written beforehand (by edgellm's writer, as
llama.cpp's converter would) and not timed for either side: edgellm's export reads the Hugging
Face folder itself.

edgellm: `edgellm export MODEL --quant Q4_K_M --calibrate --calib-data TEXT --calib-windows N
--threads T --no-verify` in a fresh process, its wall time and peak RSS, and where the time went
as the manifest records it (``calibration.seconds``: forward, head, backward, cost table, types
chosen, XᵀX, GPTQ, ggml's quantizers); what the phases leave out is loading, the writer's own
conversion and the tokenizer.

llama.cpp's tools built from the llama-cpp-python sdist, as the GGUF benchmarks do:
  cmake -S llama_cpp_python-0.3.36/vendor/llama.cpp -B build -DLLAMA_CURL=OFF
  cmake --build build --target llama-imatrix llama-quantize -j2

Usage: python benchmarks/calibration_speed.py MODEL_DIR LLAMA_CPP_DIR [--windows 16] [--threads 2]
           [--f16-only | --bf16-only] [--edgellm-args "--calib-device cpu ..."]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("model", type=Path)
    ap.add_argument("llama_cpp", type=Path, help="llama.cpp's source folder, with build/bin")
    ap.add_argument("--windows", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--f16-only", action="store_true", help="time llama-imatrix on the F16 GGUF only")
    ap.add_argument("--bf16-only", action="store_true",
                    help="time llama-imatrix on the BF16 GGUF only (the faster where the CPU has AVX512-BF16: "
                         "saves the F16 run's minutes at 100 windows)")
    ap.add_argument("--edgellm-args", default="", help="more arguments for edgellm export (quoted)")
    a = ap.parse_args()

    from edgellm.exporters.calibrate import default_text

    print(f"load before: {os.getloadavg()[0]:.2f} (1-minute average; nothing else should be running)")
    work = Path(tempfile.mkdtemp(prefix="edgellm-calspeed-"))
    try:
        (work / "calib.txt").write_text(default_text())
        peer = _peer(a, work)
        if peer is None:
            return 1
        ours = _ours(a, work)
        if ours is None:
            return 1
    finally:
        shutil.rmtree(work, ignore_errors=True)
    _report(a, peer, ours)
    return 0


def _peer(a, work: Path) -> dict | None:
    from edgellm import models
    from edgellm.exporters.gguf.vocab import read_vocab
    from edgellm.exporters.gguf.write import write_gguf
    from edgellm.exporters.io.checkpoint import open_checkpoint
    from edgellm.models.families import family_for

    model = models.load_config(str(a.model))
    f16 = work / "F16.gguf"
    write_gguf(model, open_checkpoint(a.model), family_for(model, "gguf"), read_vocab(a.model, model.vocab),
               a.model, f16, "F16", a.threads)
    bins = a.llama_cpp / "build" / "bin"
    files = {"F16": f16}
    if not a.f16_only:
        r = subprocess.run([str(bins / "llama-quantize"), str(f16), str(work / "BF16.gguf"), "BF16",
                            str(a.threads)], capture_output=True, text=True)
        if r.returncode == 0:
            files["BF16"] = work / "BF16.gguf"
            if a.bf16_only:
                del files["F16"]
        else:
            print(f"llama-quantize to BF16 failed (the F16 peer only): {r.stderr[-300:]}", file=sys.stderr)
    imatrix = {}
    for t, path in files.items():
        out = work / f"imatrix-{t}.gguf"
        secs = _timed([str(bins / "llama-imatrix"), "-m", str(path), "-f", str(work / "calib.txt"), "-c", "512",
                       "--chunks", str(a.windows), "-t", str(a.threads), "-o", str(out), "--no-ppl"])
        if secs is None:
            return None
        imatrix[t] = (secs, out)
    fastest = min(imatrix, key=lambda t: imatrix[t][0])
    quant = _timed([str(bins / "llama-quantize"), "--imatrix", str(imatrix[fastest][1]), str(files[fastest]),
                    str(work / "peer-Q4_K_M.gguf"), "Q4_K_M", str(a.threads)])
    if quant is None:
        return None
    return {"model": model, "imatrix": {t: s for t, (s, _) in imatrix.items()}, "fastest": fastest,
            "quantize": quant, "total": imatrix[fastest][0] + quant}


def _timed(cmd: list[str]) -> float | None:
    start = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True)
    secs = time.perf_counter() - start
    if r.returncode != 0:
        print(f"{Path(cmd[0]).name} failed (exit {r.returncode}): {r.stderr[-2000:]}", file=sys.stderr)
        return None
    return secs


def _ours(a, work: Path) -> dict | None:
    out = work / "bundle"
    cmd = [sys.executable, "-m", "edgellm", "export", str(a.model), "--device", "laptop-x86-16gb", "--quant",
           "Q4_K_M", "--calibrate", "--calib-data", str(work / "calib.txt"), "--calib-windows", str(a.windows),
           "--threads", str(a.threads), "--no-verify", "-o", str(out), *shlex.split(a.edgellm_args)]
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    secs = _timed(cmd)
    if secs is None:
        return None
    rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    manifest = json.loads((out / "manifest.json").read_text())
    return {"seconds": secs, "peak_rss": rss * 1024 if rss > before else None, "calibration": manifest["calibration"]}


def _report(a, peer: dict, ours: dict) -> None:
    cal = ours["calibration"]
    model = peer["model"]
    print(f"model {a.model.name} ({model.n_params / 1e6:.0f} M parameters), {cal['windows']} windows of "
          f"{cal['context']} tokens, {a.threads} threads; edgellm's products in {cal['precision']}, XᵀX on "
          f"{cal.get('hessian_tokens', cal['tokens'])} tokens, Fisher on {cal['fisher_tokens']}")

    def row(label: str, secs: float, tail: str = "") -> None:
        print(f"{label:<50}{secs:8.1f} s{tail}")

    for t, secs in peer["imatrix"].items():
        row(f"llama-imatrix on the {t} GGUF", secs, "   <- the peer's" if t == peer["fastest"] else "")
    row(f"llama-quantize Q4_K_M --imatrix ({peer['fastest']})", peer["quantize"])
    row("the peer: llama-imatrix + llama-quantize", peer["total"])
    rss = f", peak RSS {ours['peak_rss'] / 1e9:.2f} GB" if ours["peak_rss"] else ""
    row("edgellm export --calibrate (whole, fresh process)", ours["seconds"],
        f"   ratio {ours['seconds'] / peer['total']:.2f} (target <= 2.00){rss}")
    phases = cal.get("seconds", {})
    for name, secs in phases.items():
        row(f"  {name}", secs)
    row("  the rest (start, loading, conversion, files)", ours["seconds"] - sum(phases.values()))


if __name__ == "__main__":
    sys.exit(main())
