"""Nightly-size fuzzing: the properties of tests/test_fuzz.py (every reader of untrusted bytes:
GGUF checker, safetensors reader and index, bundle opener, config parsing and planning, device
profiles) with a large random budget instead of the suite's small fixed-seed one.

    python benchmarks/fuzz.py [--examples N]      (default 5000 per property; a few minutes each)

Prints, per property, the examples run, the time, and pass/fail; a failure prints Hypothesis's
shrunk input, which becomes a regression test.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--examples", type=int, default=5000)
    ap.add_argument("-k", default=None, help="only properties matching this pytest -k expression")
    args = ap.parse_args()
    env = {**os.environ, "EDGELLM_FUZZ_EXAMPLES": str(args.examples)}
    names = subprocess.run([sys.executable, "-m", "pytest", "-o", "addopts=", "--collect-only", "-q", "tests/test_fuzz.py"]
                           + (["-k", args.k] if args.k else []), capture_output=True, text=True, cwd=ROOT,
                           env=env).stdout.split()
    tests = [n for n in names if "::test_" in n]
    failed = 0
    print(f"{'property':62s} {'examples':>9s} {'seconds':>8s}  result")
    for t in tests:
        t0 = time.monotonic()
        r = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-x", t], cwd=ROOT,
                           env=env, capture_output=True, text=True)
        ok = r.returncode == 0
        failed += not ok
        print(f"{t.split('::')[1]:62s} {args.examples:9d} {time.monotonic() - t0:8.1f}  {'ok' if ok else 'FAILED'}")
        if not ok:
            print(r.stdout[-4000:])
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
