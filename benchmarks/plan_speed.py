"""`edgellm plan` wall time per bundled config, as a user runs it (a fresh process each time).

Target (issue 2): under 0.5 s on any config, no network.  Prints the median of 5 runs and its
ratio to the target.  Usage: python benchmarks/plan_speed.py
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from pathlib import Path

from edgellm.models import bundled_ids

TARGET_S = 0.5
EXE = str(Path(sys.executable).with_name("edgellm"))


def wall(args: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run([EXE, *args], capture_output=True, check=False,
                   env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
    return time.perf_counter() - t0


def main() -> None:
    print(f"{'model':40s} {'median s':>9s} {'vs 0.5 s':>9s}")
    worst = 0.0
    for hub_id in bundled_ids():
        times = [wall(["plan", hub_id, "--device", "rpi5-8gb", "--json"]) for _ in range(5)]
        med = statistics.median(times)
        worst = max(worst, med)
        print(f"{hub_id:40s} {med:9.3f} {med / TARGET_S:8.2f}x")
    print(f"worst {worst:.3f} s = {worst / TARGET_S:.2f}x the 0.5 s target")


if __name__ == "__main__":
    main()
