"""``edgellm demo``: the main job end to end on built-in data, with no network (``edgellm.demo``).

1. build a small llama (tokenizer and weights trained here on the Python standard library's
   source; cached after the first run), 2. plan it for the device, 3. export and verify a GGUF
   bundle, 4. run it, 5. profile it beside the plan's predictions; then plan the published configs
   bundled with edgellm for the same device.  Without the ``[export]`` extra only the planning runs.
"""

from __future__ import annotations

import importlib.util
import sys

from edgellm import devices
from edgellm.cli.common import print_json
from edgellm.cli.progress import StageLine
from edgellm.demo import bundled_plans, end_to_end
from edgellm import formats
from edgellm.plan import report
from edgellm.textfmt import table
from edgellm.units import fmt_bytes, fmt_count

def add_parser(sub) -> None:
    p = sub.add_parser("demo", help="build, plan, export, verify, run and profile a demo model (offline)",
                       description=__doc__.split("\n\n")[0].replace("``", "'"))
    p.add_argument("--device", "-d", default="rpi5-8gb", help="device profile (default: rpi5-8gb)")
    p.add_argument("--format", choices=formats.names(), default="gguf",
                   help="bundle format to export, run and profile (default gguf)")
    p.add_argument("--plan-only", action="store_true", help="only plan the bundled model configs")
    p.add_argument("--rebuild", action="store_true", help="retrain the cached demo model")
    p.add_argument("--json", action="store_true", help="print everything as JSON")
    p.set_defaults(func=run)


def _print_bundled(plans, device) -> None:
    rows = []
    for p in plans:
        w = p.winner
        rows.append([p.model.name, fmt_count(p.model.n_params), w.choice.label if w else "nothing fits",
                     fmt_bytes(w.estimate.file_bytes) if w else "-", fmt_bytes(w.estimate.memory.total) if w else "-",
                     f"{w.estimate.decode_tps:.1f}" if w else "-",
                     "" if w else (p.suggestions[0] if p.suggestions else "")])
    print(f"\npublished models on {device.name} (configs bundled with edgellm; context {device.budgets.context} "
          "or the model's maximum):")
    print(table(["model", "params", "chosen", "file", "peak RAM", "decode/s", "note"], rows, right={1, 3, 4, 5}))


def run(args) -> int:
    device = devices.find(args.device)
    have_toolchain = all(importlib.util.find_spec(m) for m in ("torch", "transformers", "gguf"))
    demo = None
    if not args.plan_only and have_toolchain:
        line = StageLine()
        demo = end_to_end(device, args.rebuild, (lambda s: None) if args.json else line, args.format, args.device)
        line.done()
    plans = bundled_plans(device)
    if args.json:
        print_json({"demo": demo, "bundled_plans": [report.to_json(p) for p in plans]})
        return 0
    if demo:
        h, prof, pred = demo["verification"]["held_out"], demo["profile"], demo["prediction"]
        print(f"\ndemo model  {demo['model_dir']} ({demo['plan']['model']['parameters']:,} params, trained here)")
        print(f"bundle      {demo['bundle']}/ ({demo['plan']['winner']['label']})")
        print(f"verified    tokenizer identical; KLD {h['mean_kld']:.5f}, top-1 {h['top1_agreement']:.1%}, "
              f"perplexity x{h['ppl_ratio']:.4f} vs the original")
        print(f"sample      {demo['sample']!r}")
        print(f"chat        {demo['chat_reply']!r}")
        print(f"profile     here: prefill {prof['prefill_tps']:.0f} tok/s, decode {prof['decode_tps']:.0f} tok/s, "
              f"TTFT {prof['ttft_s'] * 1000:.0f} ms, peak RSS {fmt_bytes(prof['peak_rss_bytes'])}")
        print(f"predicted   on {device.name}: prefill {pred['prefill_tokens_per_s']:.0f} tok/s, decode "
              f"{pred['decode_tokens_per_s']:.0f} tok/s, peak {fmt_bytes(pred['peak_memory_bytes'])}")
    elif not args.plan_only:
        print("(export toolchain not installed: pip install 'edgellm[export]' for the build/export/run part)",
              file=sys.stderr)
    _print_bundled(plans, device)
    return 0
