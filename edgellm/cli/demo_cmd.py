"""``edgellm demo``: the main job end to end on built-in data, with no network.

Today the main job is planning: the demo plans the models bundled with edgellm for one device and
prints the chosen build of each.  It grows into build -> export -> verify -> run as those land.
"""

from __future__ import annotations

from edgellm import devices, models
from edgellm.cli.common import print_json
from edgellm.plan import planner, report
from edgellm.textfmt import table
from edgellm.units import fmt_bytes, fmt_count

DEMO_MODEL = "Qwen/Qwen2.5-0.5B-Instruct"


def add_parser(sub) -> None:
    p = sub.add_parser("demo", help="plan the bundled example models for a device (offline)",
                       description="Plan every model bundled with edgellm for a device: the full "
                                   f"plan for {DEMO_MODEL}, then the chosen build of each model.")
    p.add_argument("--device", "-d", default="rpi5-8gb", help="device profile (default: rpi5-8gb)")
    p.add_argument("--json", action="store_true", help="print all plans as JSON")
    p.set_defaults(func=run)


def run(args) -> int:
    device = devices.find(args.device)
    plans = []
    for hub_id in models.bundled_ids():
        m = models.load_config(hub_id)
        plans.append(planner.plan(m, device, planner.budgets_for(device, None, None, None, m)))
    if args.json:
        print_json([report.to_json(p) for p in plans])
        return 0
    print(report.to_text(next(p for p in plans if p.model.name == DEMO_MODEL)))
    rows = []
    for p in plans:
        w = p.winner
        rows.append([p.model.name, fmt_count(p.model.n_params),
                     w.choice.label if w else "nothing fits",
                     fmt_bytes(w.estimate.file_bytes) if w else "-",
                     fmt_bytes(w.estimate.memory.total) if w else "-",
                     f"{w.estimate.decode_tps:.1f}" if w else "-",
                     "" if w else (p.suggestions[0] if p.suggestions else "")])
    print(f"\nevery bundled model on {device.name} (context {device.budgets.context}, or the model's "
          "maximum when shorter):")
    print(table(["model", "params", "chosen", "file", "peak RAM", "decode/s", "note"], rows, right={1, 3, 4, 5}))
    return 0
