"""``edgellm demo``: the main job end to end on built-in data, with no network.

1. build a small llama (tokenizer and weights trained here on the Python standard library's
   source; cached after the first run), 2. plan it for the device, 3. export and verify a GGUF
   bundle, 4. run it, 5. profile it beside the plan's predictions; then plan the published configs
   bundled with edgellm for the same device.  Without the ``[export]`` extra only the planning runs.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

from edgellm import devices, models
from edgellm.cli.common import print_json
from edgellm.cli.progress import StageLine
from edgellm.errors import EdgeLLMError
from edgellm.plan import planner, report
from edgellm.textfmt import table
from edgellm.units import fmt_bytes, fmt_count

DEMO_PROMPT = "def "


def cache_dir() -> Path:
    """$EDGELLM_CACHE/demo, else $XDG_CACHE_HOME/edgellm/demo, else ~/.cache/edgellm/demo."""
    from edgellm.exporters.reference_model import cache_root
    return cache_root() / "demo"


def add_parser(sub) -> None:
    p = sub.add_parser("demo", help="build, plan, export, verify, run and profile a demo model (offline)",
                       description=__doc__.split("\n\n")[0].replace("``", "'"))
    p.add_argument("--device", "-d", default="rpi5-8gb", help="device profile (default: rpi5-8gb)")
    p.add_argument("--format", choices=("gguf", "onnx"), default="gguf",
                   help="bundle format to export, run and profile (default gguf)")
    p.add_argument("--plan-only", action="store_true", help="only plan the bundled model configs")
    p.add_argument("--rebuild", action="store_true", help="retrain the cached demo model")
    p.add_argument("--json", action="store_true", help="print everything as JSON")
    p.set_defaults(func=run)


def _bundled_plans(device) -> list:
    return [planner.plan(m, device, planner.budgets_for(device, None, None, None, m))
            for m in (models.load_config(h) for h in models.bundled_ids())]


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


def _cli(*args: str) -> str:
    """Run an edgellm command in its own process, as on the device: the runtime's speed and memory
    are measured without the export toolchain loaded."""
    r = subprocess.run([sys.executable, "-m", "edgellm", *args], capture_output=True, text=True)
    if r.returncode:
        raise EdgeLLMError(f"demo: `edgellm {args[0]}` failed: {r.stderr.strip().splitlines()[-1:]}")
    return r.stdout


def _end_to_end(device, rebuild: bool, quiet: bool, fmt: str = "gguf", device_arg: str | None = None) -> dict:
    from edgellm.exporters.reference_model import SPECS, cache_root, reference_model
    from edgellm.pipeline import BuildRequest, build_bundle

    line = StageLine()
    say = (lambda s: None) if quiet else line
    spec = SPECS["small"]
    cached = (cache_root() / "reference" / spec.cache_name / "edgellm-reference.json").is_file()
    model_dir = reference_model("small", rebuild=rebuild, progress=lambda s, loss: say(
        f"[1/5] training the demo model on Python stdlib source: step {s}/{spec.steps}, loss {loss:.2f}"))
    if cached and not rebuild:
        say(f"[1/5] demo model: cached at {model_dir}")
    model = models.load_config(str(model_dir))
    plan = planner.plan(model, device, planner.budgets_for(device, None, None, None, model), formats=(fmt,))
    if plan.winner is None:
        raise EdgeLLMError(f"demo: no {fmt} build of the demo model fits {device.name}")
    say(f"[2/5] planned for {device.name}: {plan.winner.choice.label}")
    out = cache_dir() / f"bundle-{fmt}-{device.name}"
    built = build_bundle(BuildRequest(model=str(model_dir), device=device_arg or device.name, format=fmt,
                                      output=out, force=True),
                         say=lambda m: say("[3/5] export: " + m.split("] ", 1)[-1]))
    result, prediction = built.export, built.prediction
    say("[4/5] running the bundle")
    sample = _cli("run", str(out), "--raw", "-p", DEMO_PROMPT, "--max-tokens", "48", "--temperature", "0.8")
    chat = _cli("run", str(out), "-p", "Write a Python function that adds two numbers.", "--max-tokens", "32")
    say("[5/5] profiling the bundle")
    prof = json.loads(_cli("profile", str(out), "--prompt-tokens", "256", "--gen-tokens", "64",
                           "--repeats", "2", "--json"))[0]["edgellm"]["measured"]
    line.done()
    return {"model_dir": str(model_dir), "plan": report.to_json(plan), "bundle": str(out),
            "verification": result.verification, "sample": DEMO_PROMPT + sample.rstrip("\n"), "chat_reply": chat.rstrip("\n"), "profile": prof,
            "prediction": prediction}


def run(args) -> int:
    device = devices.find(args.device)
    have_toolchain = all(importlib.util.find_spec(m) for m in ("torch", "transformers", "gguf"))
    demo = None
    if not args.plan_only and have_toolchain:
        demo = _end_to_end(device, args.rebuild, args.json, args.format, args.device)
    plans = _bundled_plans(device)
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
