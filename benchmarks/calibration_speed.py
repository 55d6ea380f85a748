"""Calibration wall time against llama.cpp's `llama-imatrix`, same model, text, windows and threads,
measured in one run (issue 16: edgellm's calibration at most 2x llama-imatrix's).

llama-imatrix runs the model's F16 GGUF (and its BF16 one, where llama-quantize is built: ggml's
bfloat16 products are native on AVX512-BF16 CPUs) forward over the text in chunks and sums x² per
input column; the ratio is against the faster of the two.  edgellm's calibration is timed as
`edgellm export --calibrate` runs it before quantizing:
the same importance vectors (``calibrate.collect_layerwise``), the Fisher diagonal (a
backward pass on a few windows) turned into each tensor's predicted loss per candidate type as it
comes (``gguf.mix.Costs``, the export's sink: only the rows the estimate samples), and the types
chosen for Q4_K_M.  The XᵀX matrices GPTQ uses are recomputed a layer at a time while writing;
that time is shown apart.

llama.cpp's tools built from the llama-cpp-python sdist, as the GGUF benchmarks do:
  cmake -S llama_cpp_python-0.3.36/vendor/llama.cpp -B build -DLLAMA_CURL=OFF
  cmake --build build --target llama-imatrix llama-quantize -j2

Usage: python benchmarks/calibration_speed.py MODEL_DIR LLAMA_CPP_DIR [--windows 16] [--threads 2] [--precision auto] [--fisher-windows N] [--fisher-per token]
                                                    [--no-xtx] [--f16-only] [--sample-elements N]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("model", type=Path)
    ap.add_argument("llama_cpp", type=Path)
    ap.add_argument("--windows", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--precision", default="auto", help="auto (bfloat16 on AMX or a GPU, else float32), float32 or bfloat16")
    ap.add_argument("--fisher-windows", type=int, help="windows the Fisher is estimated on (0: all; default: the library's)")
    ap.add_argument("--fisher-per", choices=("window", "token"), help="the Fisher's samples (default: the library's)")
    ap.add_argument("--sample-elements", type=int, help="weights a tensor's costs are estimated on "
                    "(default: gguf.mix.SAMPLE_ELEMENTS)")
    ap.add_argument("--f16-only", action="store_true", help="time llama-imatrix on the F16 GGUF only")
    ap.add_argument("--no-xtx", action="store_true", help="skip timing the writer's XᵀX recomputation")
    a = ap.parse_args()
    if a.sample_elements:
        from edgellm.exporters.gguf import mix
        mix.SAMPLE_ELEMENTS = a.sample_elements

    from edgellm import models
    from edgellm.exporters.calibrate import default_text
    from edgellm.exporters.io.checkpoint import open_checkpoint

    model = models.load_config(str(a.model))
    ckpt = open_checkpoint(a.model)
    text = default_text()
    work = Path(tempfile.mkdtemp(prefix="edgellm-calspeed-"))
    try:
        return _run(a, model, ckpt, text, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _run(a, model, ckpt, text: str, work: Path) -> int:
    from edgellm.exporters.calibrate import collect_layerwise
    from edgellm.exporters.gguf.mix import Costs, mixed_types
    from edgellm.models.families import family_for

    arch = family_for(model, "gguf")
    (work / "calib.txt").write_text(text)
    peers = _peer_times(a, model, ckpt, arch, work)
    if peers is None:
        return 1
    peer_type, peer = min(peers.items(), key=lambda kv: kv[1])

    table_s = [0.0]

    class TimedCosts(Costs):                    # the cost table's share, timed apart
        def add(self, *args, **kw):
            t = time.perf_counter()
            super().add(*args, **kw)
            table_s[0] += time.perf_counter() - t

    def sink(cal):                              # as the export does: each Fisher into its costs as it comes
        cal.costs = TimedCosts(model, ckpt, arch, cal.imatrix, a.threads)
        return cal.costs

    t = time.perf_counter()
    cal = collect_layerwise(a.model, ckpt, text, 512, a.windows, hessian=True, fisher=True, threads=a.threads,
                            precision=a.precision, fisher_sink=sink,
                            **({"fisher_windows": a.fisher_windows} if a.fisher_windows is not None else {}),
                            **({"fisher_per": a.fisher_per} if a.fisher_per else {}))
    stats = time.perf_counter() - t
    mix = mixed_types(model, ckpt, arch, "Q4_K_M", cal, a.threads)
    ours = time.perf_counter() - t
    t = time.perf_counter()
    for name in [] if a.no_xtx else list(cal.hessian):
        cal.hessian[name]                       # the XᵀX, recomputed a layer at a time (the writer's share)
    grams = time.perf_counter() - t
    print(f"model {a.model.name} ({model.n_params / 1e6:.0f} M parameters), {cal.windows} windows of "
          f"{cal.context} tokens, {a.threads} threads, products in {cal.precision}")

    def row(label: str, secs: float, tail: str = "") -> None:
        print(f"{label:<52}{secs:7.1f} s{tail}")

    for t, secs in peers.items():
        row(f"llama-imatrix on the {t} GGUF (importance only)", secs,
            "   <- the peer (the faster)" if t == peer_type and len(peers) > 1 else "")
    row("edgellm calibration (importance, Fisher, Q4_K_M types)", ours,
        f"   ratio {ours / peer:.2f} (target <= 2.00)")
    row("  statistics (importance, Fisher)", stats - table_s[0], f"   ratio {(stats - table_s[0]) / peer:.2f}")
    row("  cost table (ggml round trips per type)", table_s[0])
    row("  types chosen", ours - stats,
        f"   ({_changed(mix.types, model, ckpt, arch)} of {len(mix.types)} tensors differ from the recipe)")
    if not a.no_xtx:
        row("edgellm XᵀX, recomputed while writing", grams)
    return 0


def _peer_times(a, model, ckpt, arch, work: Path) -> dict[str, float] | None:
    """llama-imatrix's wall time on the model's F16 GGUF and, where llama-quantize is built
    beside it, on a BF16 one: ggml multiplies bfloat16 natively on CPUs with AVX512-BF16 (on one
    such machine 1.5x faster than F16), and edgellm's products are bfloat16 there too, so the
    ratio is taken against the faster."""
    from edgellm.exporters.gguf.vocab import read_vocab
    from edgellm.exporters.gguf.write import write_gguf

    f16 = work / "F16.gguf"
    write_gguf(model, ckpt, arch, read_vocab(a.model, model.vocab), a.model, f16, "F16",
               a.threads)
    files = {"F16": f16}
    bins = a.llama_cpp / "build" / "bin"
    if (bins / "llama-quantize").exists() and not a.f16_only:
        r = subprocess.run([str(bins / "llama-quantize"), str(f16), str(work / "BF16.gguf"), "BF16",
                            str(a.threads)], capture_output=True, text=True)
        if r.returncode == 0:
            files["BF16"] = work / "BF16.gguf"
        else:
            print(f"llama-quantize to BF16 failed (the F16 peer only): {r.stderr[-300:]}", file=sys.stderr)
    times = {}
    for t, path in files.items():
        cmd = [str(bins / "llama-imatrix"), "-m", str(path), "-f", str(work / "calib.txt"), "-c", "512",
               "--chunks", str(a.windows), "-t", str(a.threads), "-o", str(work / f"imatrix-{t}.gguf"),
               "--no-ppl"]
        start = time.perf_counter()
        r = subprocess.run(cmd, capture_output=True, text=True)
        times[t] = time.perf_counter() - start
        if r.returncode != 0:
            print(f"llama-imatrix on {t} failed (exit {r.returncode}): {r.stderr[-2000:]}", file=sys.stderr)
            return None
        path.unlink()
    return times


def _changed(types: dict, model, ckpt, arch) -> int:
    from edgellm.exporters.gguf.write import plan_tensors

    recipe = {e.gguf_name: e.ggml_type for e in plan_tensors(model, ckpt, arch, "Q4_K_M")}
    return sum(t != recipe.get(name) for name, t in types.items())


if __name__ == "__main__":
    sys.exit(main())
