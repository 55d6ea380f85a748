"""``edgellm plan MODEL --device D``: which build fits, how big and fast it is, and why."""

from __future__ import annotations

import argparse

from edgellm import devices, models
from edgellm.cli.common import positive_float, positive_int, print_json, size_arg
from edgellm.errors import NothingFits
from edgellm import formats
from edgellm.plan import planner, report

HELP = """Predict, for every candidate build of MODEL (GGUF F16 ... Q2_K with an f16 or q8_0 KV
cache; ONNX fp16, int8, int4 with blocks of 32 or 128), its file size, peak RAM at the context,
prefill and decode speed on the device, and its expected quality loss; then choose the best-quality
build that fits every budget.  Only config.json is read: no weights are downloaded.

Expected quality is a mean KL divergence against the original model, predicted from the model's
size and training length and each tensor's weight type (a model fitted to llama.cpp's published
Llama 3/Llama 2 tables and to models measured here; "~" marks its typical error, the footer names
the sources).  A build predicted to lose more than --max-kld (default 0.05: about llama.cpp's
Q4_K_M on Llama-3-8B with a margin; past 0.1 answers change visibly) is not chosen; when nothing
meets speed and quality together the plan says which trade-off would.  --calibrate plans the
calibrated builds `edgellm export --calibrate` makes.

MODEL is a local folder (or its config.json) or a hub id.  A hub id is looked up in the local
Hugging Face cache, then among the configs bundled with edgellm, then on the hub.

examples:
  edgellm plan Qwen/Qwen2.5-0.5B-Instruct --device rpi5-8gb
  edgellm plan ./my-model --device my-board.toml --max-memory 2GB --min-decode-tps 15
  edgellm plan microsoft/Phi-3-mini-4k-instruct --device rpi5 --max-kld 0.1     accept more loss
  edgellm plan meta-llama/Llama-3.2-1B-Instruct --device android-midrange-6gb --format onnx --json
"""


def add_parser(sub) -> None:
    p = sub.add_parser("plan", help="choose the build of a model that fits a device",
                       description=HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", metavar="MODEL", help="local model folder, config.json, or hub id")
    p.add_argument("--device", "-d", required=True,
                   help="device profile name (see `edgellm devices`) or a .toml file")
    p.add_argument("--max-memory", type=size_arg, metavar="SIZE",
                   help="peak RAM budget, e.g. 3GB or 2.5GiB (default: the profile's RAM x app share)")
    p.add_argument("--min-decode-tps", type=positive_float, metavar="TOK_S",
                   help="slowest acceptable decode, tokens/s (default: the profile's)")
    p.add_argument("--context", type=positive_int, metavar="TOKENS",
                   help="context length to hold in memory (default: the profile's)")
    p.add_argument("--max-kld", type=positive_float, metavar="X",
                   help=f"quality budget: the most predicted mean KLD a chosen build may lose "
                        f"(default {planner.DEFAULT_MAX_KLD:g})")
    p.add_argument("--format", choices=[*formats.names(), "any"], default="any",
                   help="restrict candidates to one format (default: any)")
    p.add_argument("--calibrate", action="store_true",
                   help="plan calibrated builds (what `edgellm export --calibrate` makes)")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    p.set_defaults(func=run)


def run(args) -> int:
    model = models.load_config(args.model)
    device = devices.find(args.device)
    budgets = planner.budgets_for(device, args.max_memory, args.min_decode_tps, args.context, model, args.max_kld)
    wanted = None if args.format == "any" else (args.format,)
    result = planner.plan(model, device, budgets, wanted, calibrated=args.calibrate)
    host = calibration_need(model) if args.calibrate else None
    if args.json:
        print_json({**report.to_json(result), **({"calibration": host.to_dict()} if host else {})})
    else:
        print(report.to_text(result))
        if host:
            print(f"calibrating here (CPU, {DEFAULT_WINDOWS} windows of {DEFAULT_CONTEXT} tokens) needs "
                  f"{host.describe()}")
    if result.winner is None:
        hint = f"; would fit: {result.suggestions[0]}" if result.suggestions else ""
        raise NothingFits(f"no build of {model.name} fits {device.name} within these budgets{hint}")
    return 0


DEFAULT_WINDOWS, DEFAULT_CONTEXT = 16, 512


def calibration_need(model):
    """What ``edgellm export --calibrate`` of ``model`` will need on this machine's CPU."""
    from edgellm.exporters.calibrate import need

    return need(model, min(DEFAULT_CONTEXT, model.max_context), DEFAULT_WINDOWS)
