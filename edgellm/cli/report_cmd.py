"""``edgellm report INPUT... -o report.html``: bundles and profiles on one self-contained page."""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = """One self-contained HTML file (no network needed to view it: every chart is inline SVG)
from bundle folders and `edgellm profile --json` files: planned against measured memory,
prefill and decode per bundle; decode against context depth (profiles with --depths); quality
(mean KLD) against file size with the Pareto front marked; the sustained-run curve (--sustained).

examples:
  edgellm profile qwen-q4 --depths 0,512,2048 --json > q4.json
  edgellm report qwen-q4 qwen-q8 q4.json -o report.html
"""


def add_parser(sub) -> None:
    p = sub.add_parser("report", help="an HTML report of bundles and profiles (planned vs measured)",
                       description=HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("inputs", nargs="+", type=Path, metavar="INPUT", help="bundle folders and profile JSON files")
    p.add_argument("-o", "--output", type=Path, default=Path("report.html"), help="HTML file (default report.html)")
    p.set_defaults(func=run)


def run(args) -> int:
    from edgellm.report import write_report

    n = write_report(args.inputs, args.output)
    print(f"wrote {args.output} ({n} bundle(s))")
    return 0
