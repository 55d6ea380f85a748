"""Peak RSS of a calibrated export against the preflight's prediction (issue 16).

Runs `edgellm export MODEL --quant Q4_K_M --calibrate --no-verify` in a child process (models from
``benchmarks/realsize_models.py``: random weights at real shapes), reads the child's peak resident
set size from the kernel (getrusage of children) and prints it beside what
``exporters.calibrate.need`` predicted for the same run, and the target.

Usage: python benchmarks/calibration_memory.py MODEL_DIR --device PROFILE [--windows 16] [--target-gb 1.5]
                                               [--calib-device cpu|cuda] [--threads N] [--target-s S]
On the GPU machine (issue 27's target: the 8B shape in <= 5 minutes, the GPU doing the heavy work):
  python benchmarks/realsize_models.py llama-3.1-8b /tmp/l8b
  python benchmarks/calibration_memory.py /tmp/l8b --device laptop-x86-16gb --calib-device cuda --target-s 300
With a GPU, nvidia-smi samples its utilisation every half second over the run; the host's CPU use
is read from /proc/stat over the same span; the export's own phases (manifest) are listed.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("model", type=Path)
    ap.add_argument("--device", required=True)
    ap.add_argument("--windows", type=int, default=16)
    ap.add_argument("--target-gb", type=float)
    ap.add_argument("--out", type=Path, help="bundle folder (default: a temporary one)")
    ap.add_argument("--calib-device", default="cpu", help="cpu (default), cuda or auto")
    ap.add_argument("--threads", type=int, help="the export's --threads (default: its own)")
    ap.add_argument("--target-s", type=float, help="wall-time target in seconds")
    a = ap.parse_args()

    from edgellm import models
    from edgellm.exporters.calibrate import need

    model = models.load_config(str(a.model))
    from edgellm.exporters.compute import resolve

    device = resolve(a.calib_device, "--calib-device")
    predicted = need(model, min(512, model.max_context), a.windows, device=device)
    out = a.out or Path(tempfile.mkdtemp(prefix="edgellm-calmem-")) / "bundle"
    cmd = [sys.executable, "-m", "edgellm", "export", str(a.model), "--device", a.device, "--quant", "Q4_K_M", "--calibrate",
           "--calib-windows", str(a.windows), "--calib-device", device, "--no-verify", "--force", "-o", str(out),
           "--json", *(["--threads", str(a.threads)] if a.threads else [])]
    smi = _gpu_sampler() if device.startswith("cuda") else None
    cpu0 = _cpu_times()
    t0 = time.perf_counter()
    # the export's progress lines (its stderr) pass through as they come: a run cut short still
    # shows how far it got
    try:
        r = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
        wall = time.perf_counter() - t0
        cpu1 = _cpu_times()
        gpu = _gpu_report(smi)
        if r.returncode != 0:
            return r.returncode
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
        manifest = json.loads((out / "manifest.json").read_text())
    finally:
        if a.out is None:
            shutil.rmtree(out.parent, ignore_errors=True)      # our own temporary folder (an 8B bundle: 5 GB)
    gb = 1e9
    print(f"model {a.model.name}: {model.n_params / 1e9:.2f} B parameters, {a.windows} windows of 512 tokens")
    print(f"predicted peak RSS  {predicted.ram / gb:6.2f} GB   temporary disk {predicted.disk / gb:.2f} GB")
    print(f"measured peak RSS   {peak / gb:6.2f} GB   (measured / predicted {peak / predicted.ram:.2f}; "
          f"after the statistics and costs: {manifest['calibration']['peak_rss_bytes_so_far'] / gb:.2f} GB)")
    if predicted.gpu:
        got = manifest["calibration"].get("peak_gpu_bytes") or 0
        print(f"GPU memory          predicted {predicted.gpu / gb:.2f} GB, measured peak {got / gb:.2f} GB "
              f"({device})")
    print(f"wall time           {wall:6.0f} s (calibration on {device}, products in "
          f"{manifest['calibration'].get('precision')})")
    busy, total = cpu1[0] - cpu0[0], cpu1[1] - cpu0[1]
    print(f"host CPU            {os.cpu_count() * busy / max(total, 1):5.1f} of {os.cpu_count()} cores busy on average")
    if gpu:
        print(f"GPU utilisation     {gpu}")
    for name, secs in manifest["calibration"].get("seconds", {}).items():
        print(f"  {name:<40}{secs:8.1f} s")
    if a.target_gb:
        print(f"target: peak RSS <= {a.target_gb} GB: {'met' if peak <= a.target_gb * gb else 'NOT met'}")
    if a.target_s:
        print(f"target: wall <= {a.target_s:.0f} s: {'met' if wall <= a.target_s else 'NOT met'}")
    return 0


def _cpu_times() -> tuple[int, int]:
    """(busy, total) jiffies of the whole host (/proc/stat's first line)."""
    try:
        v = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return 0, 0
    idle = v[3] + (v[4] if len(v) > 4 else 0)
    return sum(v) - idle, sum(v)


def _gpu_sampler():
    try:
        return subprocess.Popen(["nvidia-smi", "--query-gpu=utilization.gpu,memory.used", "--format=csv,noheader,nounits",
                                 "-lms", "500"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    except OSError:
        return None


def _gpu_report(smi) -> str | None:
    if smi is None:
        return None
    smi.terminate()
    out, _ = smi.communicate()
    util = []
    for line in out.splitlines():
        try:
            util.append(float(line.split(",")[0]))
        except ValueError:
            continue
    if not util:
        return None
    util.sort()
    busy = sum(u > 0 for u in util) / len(util)
    return (f"mean {sum(util) / len(util):.0f}%, median {util[len(util) // 2]:.0f}%, max {util[-1]:.0f}%, "
            f"above 0% in {busy:.0%} of {len(util)} samples (nvidia-smi every 0.5 s)")


if __name__ == "__main__":
    sys.exit(main())
