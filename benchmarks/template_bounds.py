"""Render every hostile chat template of ``tests/corpus/templates`` and print how each ended, its
wall time and the render child's peak RSS (the bounds RESULTS.md records).

    python benchmarks/template_bounds.py
"""

import os
import sys
import time
from pathlib import Path

from edgellm.errors import BadInput
from edgellm.runtime.tokenizer import LAST_RENDER, MAX_RENDER_BYTES, MAX_RENDER_SECONDS, render_chat

CORPUS = Path(__file__).resolve().parent.parent / "tests" / "corpus" / "templates"


def main() -> int:
    print(f"bounds: {MAX_RENDER_SECONDS:g} s, {MAX_RENDER_BYTES >> 20} MiB above the caller; load {os.getloadavg()[0]:.2f}")
    print(f"{'template':<22} {'wall s':>7} {'child peak RSS MiB':>19}  outcome")
    worst = 0.0
    for path in sorted(CORPUS.glob("*.jinja")):
        LAST_RENDER.clear()
        t0 = time.monotonic()
        try:
            render_chat(path.read_text(), [{"role": "user", "content": "hi"}], where="t")
            outcome = "rendered"
        except BadInput as e:
            outcome = str(e).removeprefix("t: ")[:70]
        took = time.monotonic() - t0
        worst = max(worst, took)
        rss = LAST_RENDER.get("peak_rss_bytes", 0) / 2**20
        print(f"{path.stem:<22} {took:7.2f} {rss:19.0f}  {outcome}")
    print(f"worst wall time {worst:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
