"""``edgellm profile BUNDLE``: how fast the bundle runs here, under which conditions, beside the plan."""

from __future__ import annotations

import argparse
from pathlib import Path

from edgellm.cli.common import add_remote_args, positive_float, positive_int, print_json, remote_of
from edgellm.cli.progress import stderr_progress
from edgellm.textfmt import table
from edgellm.units import fmt_bytes

HELP = """Time the bundle on this machine with llama-bench's method (one prefill batch, then
token-by-token decode; medians of repeats) and print each figure beside the planner's prediction
recorded at export.  Records the conditions that move the numbers, before and after: CPU model,
threads, governor and clocks, temperatures, throttling (a Raspberry Pi's vcgencmd), energy per
generated token (Linux powercap/RAPL); what the machine does not expose is "unavailable".

--depths 0,512,2048 profiles with that many tokens already in the cache (decode slows as it grows).
--sustained SECONDS then decodes back to back for that long, sampling tokens/s and temperature.
--json prints llama-bench's JSON records (pp and tg tests: n_prompt, n_gen, n_depth, avg_ts,
stddev_ts, samples_ts, model_size, ...) with edgellm's own figures under "edgellm" in each.

examples:
  edgellm profile ./qwen-rpi5
  edgellm profile ./qwen-rpi5 --depths 0,512,2048 --json > profile.json
  edgellm profile ./qwen-rpi5 --sustained 120
"""


def depths_arg(text: str) -> list[int]:
    try:
        out = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected depths like 0,512,2048, got {text!r}") from None
    if not out or any(d < 0 for d in out) or len(out) > 16:
        raise argparse.ArgumentTypeError(f"expected 1 to 16 depths of 0 or more, got {text!r}")
    return out


def add_parser(sub) -> None:
    p = sub.add_parser("profile", help="measure load time, TTFT, prefill and decode speed, peak RAM",
                       description=HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bundle", help="bundle folder")
    p.add_argument("--threads", type=positive_int, default=None, help="threads (default: all usable)")
    p.add_argument("--prompt-tokens", type=positive_int, default=512, help="prompt length (default 512)")
    p.add_argument("--gen-tokens", type=positive_int, default=128, help="generated tokens (default 128)")
    p.add_argument("--repeats", type=positive_int, default=3, help="repeats; medians are reported (default 3)")
    p.add_argument("--depths", type=depths_arg, default=[0], metavar="D,D,...",
                   help="tokens already in the cache for each profile (default 0)")
    p.add_argument("--sustained", type=positive_float, metavar="SECONDS", default=0.0,
                   help="then decode back to back for SECONDS, sampling tokens/s and temperature")
    add_remote_args(p, "profile on")     # the bundle is copied there (files whose sha256 matches skipped)
    p.add_argument("--device", help="with --remote: the device profile to compare with (default: the bundle's)")
    p.add_argument("--clean", action="store_true", help="with --remote: remove the copied bundle there afterwards")
    p.add_argument("--json", action="store_true", help="llama-bench JSON records, with edgellm's figures")
    p.set_defaults(func=profile, supervised=True)


def _model_info(bundle, model) -> dict:
    import importlib.metadata as md

    from edgellm.formats import format_for
    from edgellm.runtime.backend import recorded_choice

    m, choice = bundle.manifest, bundle.manifest["choice"]
    fmt = format_for(recorded_choice(bundle))
    pkg = fmt.runtime_package
    try:
        build = f"{pkg} {md.version(pkg)}" if pkg else "unavailable"
    except md.PackageNotFoundError:
        build = "unavailable"
    artifact = m["artifact"]
    size = sum(f["bytes"] for n, f in m["files"].items() if n == artifact or n.endswith((".onnx.data", ".gguf")))
    kv = getattr(model, "kv_cache", None) or choice.get("kv_cache") or "f16"     # the cache that ran
    return {"file": artifact, "type": f"{(m.get('model') or {}).get('architecture', '?')} {choice['quant']}",
            "size": size, "n_params": (m.get("model") or {}).get("parameters"), "type_k": kv, "type_v": kv,
            "backend": f"CPU ({fmt.runtime_label or fmt.runtime})", "build_commit": build}


def _remote(args) -> int:
    """The same profile on another machine; printed beside the plan for --device (or the bundle's)."""
    from edgellm.remote import profile_remote
    from edgellm.runtime.bundle import open_bundle

    # every file checked here too: what is copied is read through the descriptors that were
    # hashed (regular files only), so nothing swapped in after the check is sent
    bundle = open_bundle(Path(args.bundle))
    try:
        passed = ["--prompt-tokens", str(args.prompt_tokens), "--gen-tokens", str(args.gen_tokens), "--repeats",
                  str(args.repeats), "--depths", ",".join(map(str, args.depths))]
        if args.threads:
            passed += ["--threads", str(args.threads)]
        if args.sustained:
            passed += ["--sustained", str(args.sustained)]
        remote = remote_of(args, stderr_progress)
        records, sent = profile_remote(remote, bundle, passed, args.clean, depths=args.depths)
        device = args.device or bundle.manifest.get("device")
        pred = _prediction_of(bundle, device) if args.device else (bundle.manifest.get("prediction") or {})
    finally:
        bundle.close()
    for r in records:
        r["edgellm"]["predicted"] = pred
        r["edgellm"]["remote"] = {"host": remote.name, "bytes_copied": sent, "device_compared": device}
    if args.json:
        print_json(records)
        return 0
    m = records[0]["edgellm"]["measured"]
    rows = [["load time", f"{m['load_s']:.2f} s", "-"], ["time to first token", f"{m['ttft_s'] * 1000:.0f} ms", "-"]]
    for r in records[1::2]:
        mm = r["edgellm"]["measured"]
        at = f" at depth {mm['depth']}" if mm["depth"] or len(records) > 2 else ""
        rows += [[f"prefill{at}", f"{mm['prefill_tps']:.1f} tok/s", f"{pred['prefill_tokens_per_s']:.1f} tok/s" if pred and not mm["depth"] else "-"],
                 [f"decode{at}", f"{mm['decode_tps']:.1f} tok/s", f"{pred['decode_tokens_per_s']:.1f} tok/s" if pred and not mm["depth"] else "-"]]
    rows.append(["peak RSS", fmt_bytes(m["peak_rss_bytes"]), fmt_bytes(pred["peak_memory_bytes"]) if pred else "-"])
    print(f"{args.bundle} on {remote.name} ({records[0]['cpu_info']}, {m['threads']} threads; "
          f"{fmt_bytes(sent)} copied), beside the plan for {device}")
    print(table(["", f"measured on {remote.host}", "predicted"], rows, right={1, 2}))
    return 0


def _prediction_of(bundle, device_name: str) -> dict:
    from edgellm.plan.report import prediction_for
    from edgellm.runtime.backend import recorded_choice

    return prediction_for(bundle.load_dir or bundle.folder, recorded_choice(bundle), device_name)


def profile(args) -> int:
    if args.remote:
        return _remote(args)
    from edgellm.runtime.backend import open_backend
    from edgellm.runtime.bench import records, run_session

    need = max(args.depths) + args.prompt_tokens + args.gen_tokens + 8
    bundle, model = open_backend(Path(args.bundle), n_ctx=need, threads=args.threads)
    session = run_session(model, args.prompt_tokens, args.gen_tokens, args.repeats, args.depths, args.sustained)
    pred = bundle.manifest.get("prediction") or {}
    if args.json:
        print_json(records(session, _model_info(bundle, model), pred, str(bundle.folder)))
        return 0
    prof = session.profiles[0]
    have = {"prefill_tokens_per_s", "decode_tokens_per_s", "peak_memory_bytes", "context"} <= set(pred)
    rows = [["load time", f"{prof.load_s:.2f} s", "-"], ["time to first token", f"{prof.ttft_s * 1000:.0f} ms", "-"]]
    for p in session.profiles:
        at = f" at depth {p.depth}" if len(session.profiles) > 1 or p.depth else ""
        rows += [[f"prefill{at}", f"{p.prefill_tps:.1f} tok/s", f"{pred['prefill_tokens_per_s']:.1f} tok/s" if have and not p.depth else "-"],
                 [f"decode{at}", f"{p.decode_tps:.1f} tok/s", f"{pred['decode_tokens_per_s']:.1f} tok/s" if have and not p.depth else "-"]]
    rows.append(["peak RSS", fmt_bytes(max(p.peak_rss_bytes for p in session.profiles)),
                 fmt_bytes(pred["peak_memory_bytes"]) + f" at context {pred['context']}" if have else "-"])
    print(f"{bundle.folder}: {bundle.manifest['choice']['quant']}, {prof.threads} threads, "
          f"{prof.prompt_tokens}-token prompt, {prof.gen_tokens} generated, median of {prof.repeats}")
    print(f"(predictions were made for {bundle.manifest.get('device')}; compare on that device)")
    print(table(["", "measured", "predicted"], rows, right={1, 2}))
    print(_conditions_line(session))
    if session.sustained:
        tps = [s["decode_tps"] for s in session.sustained]
        print(f"sustained {session.sustained[-1]['t_s']:.0f} s: decode {tps[0]:.1f} -> {tps[-1]:.1f} tok/s "
              f"(min {min(tps):.1f}) over {len(tps)} samples")
    bundle.close()
    return 0


def _conditions_line(s) -> str:
    b, a = s.before, s.after

    def temps(c):
        t = c["temperatures_c"]
        return f"{max(t.values()):.0f} C" if t and "value" not in t else "unavailable"
    thr = a["throttling"]
    throttled = ", ".join(thr["flags"]) or "none" if "flags" in thr else "unavailable"
    jpt = s.joules_per_token
    return (f"conditions: {b['cpu_model']}, governor {b['governor']}, temperature {temps(b)} -> {temps(a)}, "
            f"throttling {throttled}, energy " + (f"{jpt:.3f} J/token" if isinstance(jpt, float) else "unavailable"))
