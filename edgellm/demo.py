"""The demo as a library: the main job end to end on a model edgellm trains itself, with no network.

``end_to_end``: 1. build a small llama (tokenizer and weights trained here on the Python standard
library's source; cached after the first run), 2.-3. plan, export and verify a bundle for the
device (``pipeline.build_bundle``: the plan is made once, there), 4. run it, 5. profile it beside
the plan's predictions.  ``bundled_plans``: the published configs bundled with edgellm, planned for
the same device.  ``edgellm demo`` parses its flags, calls these and prints.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from edgellm import models
from edgellm.errors import EdgeLLMError, NothingFits
from edgellm.plan import planner, report

DEMO_PROMPT = "def "


def cache_dir() -> Path:
    """$EDGELLM_CACHE/demo, else $XDG_CACHE_HOME/edgellm/demo, else ~/.cache/edgellm/demo."""
    from edgellm.exporters.reference_model import cache_root
    return cache_root() / "demo"


def bundled_plans(device) -> list:
    return [planner.plan(m, device, planner.budgets_for(device, None, None, None, m))
            for m in (models.load_config(h) for h in models.bundled_ids())]


def _cli(*args: str) -> str:
    """Run an edgellm command in its own process, as on the device: the runtime's speed and memory
    are measured without the export toolchain loaded."""
    r = subprocess.run([sys.executable, "-m", "edgellm", *args], capture_output=True, text=True)
    if r.returncode:
        raise EdgeLLMError(f"demo: `edgellm {args[0]}` failed: {r.stderr.strip().splitlines()[-1:]}")
    return r.stdout


def end_to_end(device, rebuild: bool = False, say=lambda s: None, fmt: str = "gguf",
               device_arg: str | None = None) -> dict:
    """Build (or reuse) the demo model, then plan, export, verify, run and profile it for ``device``
    (a ``DeviceProfile``); what it did, as a dict the CLI prints.  ``say``: progress lines."""
    from edgellm.exporters.reference_model import SPECS, cache_root, reference_model
    from edgellm.pipeline import BuildRequest, build_bundle

    spec = SPECS["small"]
    cached = (cache_root() / "reference" / spec.cache_name / "edgellm-reference.json").is_file()
    model_dir = reference_model("small", rebuild=rebuild, progress=lambda s, loss: say(
        f"[1/5] training the demo model on Python stdlib source: step {s}/{spec.steps}, loss {loss:.2f}"))
    if cached and not rebuild:
        say(f"[1/5] demo model: cached at {model_dir}")
    out = cache_dir() / f"bundle-{fmt}-{device.name}"
    say(f"[2/5] planning for {device.name}")
    try:
        built = build_bundle(BuildRequest(model=str(model_dir), device=device_arg or device.name, format=fmt,
                                          output=out, force=True),
                             say=lambda m: say("[3/5] export: " + str(m).split("] ", 1)[-1]))
    except NothingFits:
        raise EdgeLLMError(f"demo: no {fmt} build of the demo model fits {device.name}") from None
    result, prediction, plan = built.export, built.prediction, built.plan
    say("[4/5] running the bundle")
    sample = _cli("run", str(out), "--raw", "-p", DEMO_PROMPT, "--max-tokens", "48", "--temperature", "0.8")
    chat = _cli("run", str(out), "-p", "Write a Python function that adds two numbers.", "--max-tokens", "32")
    say("[5/5] profiling the bundle")
    prof = json.loads(_cli("profile", str(out), "--prompt-tokens", "256", "--gen-tokens", "64",
                           "--repeats", "2", "--json"))[0]["edgellm"]["measured"]
    return {"model_dir": str(model_dir), "plan": report.to_json(plan), "bundle": str(out),
            "verification": result.verification, "sample": DEMO_PROMPT + sample.rstrip("\n"),
            "chat_reply": chat.rstrip("\n"), "profile": prof, "prediction": prediction}
