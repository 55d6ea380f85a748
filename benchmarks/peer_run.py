"""What the peer benchmarks share: timing a command with GNU time, and the command line
(peer location, work folder, model shape, threads) with the real-size model built on demand."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent
PY = sys.executable
EDGELLM = str(Path(PY).with_name("edgellm"))


def timed(cmd: list[str], log: Path, env: dict | None = None) -> tuple[float, int]:
    """(wall seconds, peak RSS bytes) of one command, via GNU time."""
    with open(log, "w") as f:
        r = subprocess.run(["/usr/bin/time", "-f", "@@ %e %M", *cmd], stdout=f, stderr=subprocess.STDOUT, env=env)
    last = [ln for ln in log.read_text().splitlines() if ln.startswith("@@ ")][-1].split()
    if r.returncode:
        raise SystemExit(f"failed: {' '.join(cmd)} (see {log})")
    return float(last[1]), int(last[2]) * 1024


def parse_args(peer: str | None = None) -> tuple[argparse.Namespace, Path]:
    """[``peer`` (a folder)], work dir, shape, --threads; returns the args and the built model folder."""
    ap = argparse.ArgumentParser()
    if peer:
        ap.add_argument(peer, type=Path)
    ap.add_argument("work", type=Path)
    ap.add_argument("shape", nargs="?", default="qwen2.5-0.5b")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    a.work.mkdir(parents=True, exist_ok=True)
    model = a.work / a.shape
    subprocess.run([PY, str(HERE / "realsize_models.py"), a.shape, str(model)], check=True, capture_output=True)
    return a, model
