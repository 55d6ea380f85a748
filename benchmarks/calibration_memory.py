"""Peak RSS of a calibrated export against the preflight's prediction (issue 16).

Runs `edgellm export MODEL --quant Q4_K_M --calibrate --no-verify` in a child process (models from
``benchmarks/realsize_models.py``: random weights at real shapes), reads the child's peak resident
set size from the kernel (getrusage of children) and prints it beside what
``exporters.calibrate.need`` predicted for the same run, and the target.

Usage: python benchmarks/calibration_memory.py MODEL_DIR --device PROFILE [--windows 16] [--target-gb 1.5]
                                               [--calib-device cpu|cuda]
On the GPU machine (issue 16's target: the 8B shape in <= 10 minutes):
  python benchmarks/realsize_models.py llama-3.1-8b /tmp/l8b
  python benchmarks/calibration_memory.py /tmp/l8b --device laptop-x86-16gb --calib-device cuda
"""

from __future__ import annotations

import argparse
import json
import resource
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
    a = ap.parse_args()

    from edgellm import models
    from edgellm.exporters.calibrate import need

    model = models.load_config(str(a.model))
    from edgellm.exporters.compute import resolve

    device = resolve(a.calib_device, "--calib-device")
    predicted = need(model, min(512, model.max_context), a.windows, device=device)
    out = a.out or Path(tempfile.mkdtemp(prefix="edgellm-calmem-")) / "bundle"
    exe = Path(sys.executable).with_name("edgellm")
    cmd = [str(exe), "export", str(a.model), "--device", a.device, "--quant", "Q4_K_M", "--calibrate",
           "--calib-windows", str(a.windows), "--calib-device", device, "--no-verify", "--force", "-o", str(out),
           "--json"]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        print(r.stderr, file=sys.stderr)
        return r.returncode
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    manifest = json.loads((out / "manifest.json").read_text())
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
    if a.target_gb:
        print(f"target: peak RSS <= {a.target_gb} GB: {'met' if peak <= a.target_gb * gb else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
