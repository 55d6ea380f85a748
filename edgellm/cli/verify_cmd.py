"""``edgellm verify BUNDLE``: is this bundle sound, and does it run here?  One line (or --json)."""

from __future__ import annotations

import time

from edgellm.cli.common import print_json
from edgellm.units import fmt_bytes

HELP = """Check a bundle the way a device would before shipping it: the manifest against its JSON
Schema (runtime/schemas/bundle-manifest-v1.schema.json; another version is named and refused),
every file's size and sha256 (and that the folder holds nothing the manifest does not list),
then load the model in its runtime and generate a few tokens.  Prints one line; --json for
scripts.  Exit codes as elsewhere: 0 sound, 2 a broken or unsupported bundle, 6 the runtime
crashed on it.

examples:
  edgellm verify ./qwen-rpi5
  edgellm verify ./qwen-rpi5 --json
"""
PROMPT = "Hello"
TOKENS = 4


def add_parser(sub) -> None:
    import argparse

    p = sub.add_parser("verify", help="check a bundle's manifest, checksums, and that it loads and generates",
                       description=HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bundle", help="bundle folder")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=run, supervised=True)


def run(args) -> int:
    from edgellm.errors import EdgeLLMError

    try:
        return _verify(args)
    except EdgeLLMError as e:
        if args.json:                          # scripts get an answer on stdout too
            print_json({"bundle": args.bundle, "ok": False, "error": e.message, "exit_code": e.exit_code})
        raise


def _verify(args) -> int:
    from edgellm.formats import format_for
    from edgellm.runtime.backend import open_backend, recorded_choice

    t0 = time.perf_counter()
    bundle, model = open_backend(args.bundle, n_ctx=256)
    files = bundle.manifest["files"]
    total = sum(f["bytes"] for f in files.values())
    ids = model.prompt_ids(PROMPT, chat=False)
    pieces = list(model.stream(PROMPT, TOKENS, 0.0, chat=False))
    choice = bundle.manifest["choice"]
    fmt = format_for(recorded_choice(bundle))
    runtime = fmt.runtime_label or fmt.runtime
    result = {"bundle": str(bundle.folder), "ok": True, "manifest_version": bundle.manifest["version"],
              "schema": f"bundle-manifest-v{bundle.manifest['version']}.schema.json", "files": len(files),
              "bytes": total, "format": choice["format"], "quant": choice["quant"], "runtime": runtime,
              "prompt_tokens": len(ids), "generated": "".join(pieces), "seconds": round(time.perf_counter() - t0, 2)}
    bundle.close()
    if args.json:
        print_json(result)
    else:
        print(f"{result['bundle']}: ok: manifest v{result['manifest_version']} matches its schema, {len(files)} files "
              f"({fmt_bytes(total)}) match their sha256, {choice['format']} {choice['quant']} loads in {runtime} "
              f"and generates")
    return 0
