"""What `edgellm profile --remote` adds to a local profile's wall time, the copy excluded.

Target (issue 15): at most 10%.  A real sshd on 127.0.0.1 (tests/sshd_helper.py) stands in for the
device, so the far side's work is the same as the local one and the difference is what remote
profiling itself costs: ssh connections, the far side's sha256 check of the cached bundle, the
JSON coming back.  The bundle is copied once before timing; every timed remote run finds it
cached (nothing copied).  Local and remote runs alternate, ``--rounds`` each.

    python benchmarks/remote_overhead.py BUNDLE [--rounds 3] [--prompt-tokens 512 --gen-tokens 128]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("bundle")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--prompt-tokens", default="512")
    ap.add_argument("--gen-tokens", default="128")
    args = ap.parse_args()
    sys.path.insert(0, str(HERE.parent / "tests"))
    from sshd_helper import start_sshd

    exe = str(Path(sys.executable).with_name("edgellm"))
    common = [exe, "profile", args.bundle, "--prompt-tokens", args.prompt_tokens, "--gen-tokens", args.gen_tokens,
              "--repeats", "2", "--json"]
    with tempfile.TemporaryDirectory() as d:
        proc, config, _ = start_sshd(Path(d))
        remote = ["--remote", "edge-test", "--ssh-config", str(config()), "--remote-python", sys.executable]
        try:
            def timed(cmd):
                t = time.perf_counter()
                r = subprocess.run(cmd, capture_output=True, text=True)
                if r.returncode != 0:
                    raise SystemExit(r.stderr.strip())
                return time.perf_counter() - t, json.loads(r.stdout)

            first, recs = timed(common + remote)             # copies the bundle: not timed below
            print(f"first remote run (with the copy of {recs[0]['edgellm']['remote']['bytes_copied']:,} bytes): "
                  f"{first:.1f} s")
            local, far = [], []
            for _ in range(args.rounds):
                local.append(timed(common)[0])
                t, recs = timed(common + remote)
                assert recs[0]["edgellm"]["remote"]["bytes_copied"] == 0
                far.append(t)
            subprocess.run(common + remote + ["--clean"], capture_output=True)
        finally:
            proc.terminate()
            proc.wait(timeout=10)
    lo, fa = statistics.median(local), statistics.median(far)
    print(f"local profile:  median {lo:.2f} s  ({', '.join(f'{x:.2f}' for x in local)})")
    print(f"remote profile: median {fa:.2f} s  ({', '.join(f'{x:.2f}' for x in far)}), bundle already there")
    print(f"remote / local: {fa / lo:.3f}  (target: at most 1.10)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
