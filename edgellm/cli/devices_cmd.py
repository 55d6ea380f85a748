"""``edgellm devices``: list and show device profiles; ``edgellm device measure``: make one."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from edgellm import devices
from edgellm.cli.common import add_remote_args, print_json, remote_of
from edgellm.cli.progress import stderr_progress
from edgellm.devices.measure import default_name, measure
from edgellm.core.files import atomic_write
from edgellm.textfmt import table
from edgellm.units import fmt_bytes, fmt_rate


def add_parser(sub) -> None:
    p = sub.add_parser("devices", aliases=["device"], help="list, show and measure device profiles",
                       description="Device profiles describe a machine's memory, CPU and accelerators. "
                                   f"Your own go in {devices.user_dir()} (or $EDGELLM_DEVICES_DIR); "
                                   "`--device FILE.toml` also works.")
    p.set_defaults(func=run_list, json=False)
    dsub = p.add_subparsers(dest="devices_command", metavar="SUBCOMMAND")
    ls = dsub.add_parser("list", help="list known profiles (the default)")
    ls.add_argument("--json", action="store_true", help="print as JSON")
    ls.set_defaults(func=run_list)
    p.add_argument("--json", action="store_true", help="print as JSON")
    show = dsub.add_parser("show", help="show one profile")
    show.add_argument("name", help="profile name, alias, or .toml file")
    show.add_argument("--json", action="store_true", help="print as JSON")
    show.set_defaults(func=run_show)
    m = dsub.add_parser("measure", help="measure this machine and write its profile",
                        formatter_class=argparse.RawDescriptionHelpFormatter,
                        description="Measure this machine (cores, ISA, RAM, multi-threaded memory "
                                    "read and copy bandwidth, fp32 matmul rate, and the decode and prefill "
                                    "rates of llama.cpp's and ONNX Runtime's kernels for each weight type) and "
                                    "write a profile that `--device NAME` then finds.  Takes three to six minutes on "
                                    "a 2-core machine, the more the larger its last-level cache (decode is timed "
                                    "from cold caches), ten seconds with --no-kernels.  Run it on a quiet machine: it refuses "
                                    "(exit code 7) when other processes use the CPU, whose figures would be wrong.")
    m.add_argument("--name", default=None, help=f"profile name (default: {default_name()})")
    m.add_argument("-o", "--output", type=Path, default=None,
                   help=f"file to write (default: {devices.user_dir()}/NAME.toml)")
    k = m.add_mutually_exclusive_group()
    k.add_argument("--kernels", nargs="?", const="all", default="all", metavar="TYPES", type=_kernel_types,
                   help="which weight types' kernels to measure (default: all; e.g. Q8_0,Q4_K,int4/32), so plans "
                        "rank builds by what they do here rather than by estimates")
    k.add_argument("--no-kernels", dest="kernels", action="store_const", const=None,
                   help="skip the kernels (ten seconds): plans then estimate speed from bandwidth and the fp32 rate")
    m.add_argument("--update-profile", metavar="PROFILE",
                   help="fold the measurements (bandwidth, fp32 rate, [kernels]) into this existing profile "
                        "instead of writing a new one, the source recorded; a shipped profile's updated copy "
                        "goes to your profile folder, where it takes precedence")
    m.add_argument("--allow-busy", action="store_true",
                   help="measure even while other processes use the CPU (a board whose background work never "
                        "stops): figures taken busy are kept, and the profile names them, instead of exit code 7")
    add_remote_args(m, "measure")
    m.add_argument("--json", action="store_true", help="print the measured profile as JSON")
    m.set_defaults(func=run_measure)


def _kernel_types(text) -> tuple[str, ...]:
    """``--kernels [TYPES]``: argparse leaves the default and the bare flag's "all" unconverted."""
    from edgellm.devices.kernels import GGML_TYPES
    from edgellm.runtime.onnx_probe import WEIGHT_TYPES

    if isinstance(text, tuple):
        return text
    if text == "all":
        return GGML_TYPES + WEIGHT_TYPES
    names = {t.upper(): t for t in GGML_TYPES + WEIGHT_TYPES}
    types = tuple(names.get(t.strip().upper(), t.strip()) for t in text.split(",") if t.strip())
    bad = [t for t in types if t not in names.values()]
    if bad or not types:
        what = ", ".join(bad) if bad else repr(text)
        raise argparse.ArgumentTypeError(f"not a measurable weight type: {what} (one or more of "
                                         f"{','.join(GGML_TYPES)} for llama.cpp, {','.join(WEIGHT_TYPES)} for ONNX Runtime)")
    return types


def _profile_json(p: devices.DeviceProfile) -> dict:
    data = dataclasses.asdict(p)
    data["memory_budget_bytes"] = p.memory_budget
    data["effective_bandwidth_bytes_per_s"] = p.memory.effective_bandwidth
    data["effective_fp32_flops"] = p.cpu.effective_fp32
    return data


def run_list(args) -> int:
    profiles = sorted(devices.all_profiles(), key=lambda p: p.name)
    if args.json:
        print_json([_profile_json(p) for p in profiles])
        return 0
    rows = [[p.name, fmt_bytes(p.memory.ram), fmt_bytes(p.memory_budget),
             fmt_rate(p.memory.effective_bandwidth, "B/s"),
             f"{p.cpu.cores_big}+{p.cpu.cores_little}" if p.cpu.cores_little else str(p.cpu.cores_big),
             ",".join(a.kind + ":" + a.provider for a in p.accelerators) or "-", p.description]
            for p in profiles]
    print(table(["name", "RAM", "app budget", "eff. bandwidth", "cores", "accelerators", "description"],
                rows, right={1, 2, 3}))
    return 0


def run_show(args) -> int:
    p = devices.find(args.name)
    if args.json:
        print_json(_profile_json(p))
        return 0
    m, c = p.memory, p.cpu
    lines = [
        f"{p.name}: {p.description}", f"  file         {p.source}",
        f"  aliases      {', '.join(p.aliases) or '-'}",
        f"  RAM          {fmt_bytes(m.ram)}; an app may use {m.app_share:.0%} = {fmt_bytes(p.memory_budget)}",
        f"  bandwidth    theoretical {fmt_rate(m.bandwidth, 'B/s') if m.bandwidth else '-'}, "
        f"measured {fmt_rate(m.bandwidth_measured, 'B/s') if m.bandwidth_measured else '-'}; "
        f"planner uses {fmt_rate(m.effective_bandwidth, 'B/s')}",
        f"  CPU          {c.name} ({c.arch}), {c.cores_big} big + {c.cores_little} little cores"
        + (f" at {c.freq / 1e9:.2f} GHz" if c.freq else ""),
        f"  ISA          {', '.join(c.isa) or '-'}",
        f"  fp32         peak {fmt_rate(c.fp32_peak, 'FLOPS') if c.fp32_peak else '-'}, measured "
        f"{fmt_rate(c.fp32_measured, 'FLOPS') if c.fp32_measured else '-'}; planner uses {fmt_rate(c.effective_fp32, 'FLOPS')}",
    ]
    for a in p.accelerators:
        lines.append(f"  accelerator  {a.kind} {a.name}: {fmt_rate(a.compute, 'OPS')} {a.precision}, "
                     f"{a.runtime} via {a.provider}, takes {', '.join(a.formats)}"
                     + (f" ({', '.join(a.weight_types)} weights)" if a.weight_types else ""))
    by_runtime: dict[str, list[str]] = {}
    for key, rate in p.kernels:
        runtime, _, ty = key.partition(":")
        by_runtime.setdefault(runtime, [])
        if ty:
            by_runtime[runtime].append(ty)
    sources = sorted({rate.source for _, rate in p.kernels if rate.source})
    lines.append("  kernels      " + ("; ".join(f"{r} {', '.join(t) or '(per-token cost only)'}" for r, t in by_runtime.items())
                                      + (f" ({'; '.join(sources)})" if sources else "") if p.kernels else
                                      "none: plans estimate speed from bandwidth and the fp32 rate (edgellm device measure)"))
    lines += [f"  runtimes     {', '.join(p.runtimes)}; prefers {', '.join(p.preferred_formats)}",
              f"  budgets      context {p.budgets.context}, decode >= {p.budgets.min_decode_tps:g} tok/s"]
    print("\n".join(lines))
    return 0


MAX_MEASURED = 1 << 20                  # a measured profile's TOML, [kernels] included, is a few KB


def _measure_remote(args, name: str) -> tuple[devices.DeviceProfile, str]:
    """(the profile, its TOML) measured on --remote.  The far side's answer is a stranger's input:
    bounded, strict UTF-8 TOML, every string printable, checked by the profile schema as a local
    profile is (BadInput naming the key), named ``name`` (ours, never the far side's; its aliases
    dropped, so it cannot take another profile's name), then written out afresh from the checked
    values, so nothing of the far side's text reaches a file here but those values."""
    import math
    import shlex
    import tomllib

    from edgellm.errors import BadInput
    from edgellm.remote import MAX_WORK_S

    remote = remote_of(args, stderr_progress)
    stderr_progress(f"measuring {remote.name}" + (" with kernels (three to six minutes)" if args.kernels else ""))
    kernels = (f" --kernels {','.join(_kernel_types(args.kernels))}" if args.kernels else " --no-kernels") + \
        (" --allow-busy" if args.allow_busy else "")
    path = ".cache/edgellm/remote/measured.toml"
    r = remote.ssh(f"mkdir -p .cache/edgellm/remote && {remote.edgellm()} device measure --name {shlex.quote(name)}"
                   f"{kernels} -o {path} > /dev/null && cat {path} && rm -f {path}",
                   text=False, limit=MAX_MEASURED, timeout=MAX_WORK_S)
    if r.returncode != 0:
        raise remote.fail(r, "measuring")
    where = f"the profile measured on {remote.name}"
    try:
        data = tomllib.loads(r.stdout.decode("utf-8"))
    except (ValueError, RecursionError) as e:          # UnicodeDecodeError and TOMLDecodeError included
        raise BadInput(f"{where}: not UTF-8 TOML ({str(e)[:120]!r})") from None

    def printable(v, key):
        if isinstance(v, str) and (not v.isprintable() or len(v) > 300):
            raise BadInput(f"{where}: {key}: expected printable text of at most 300 characters")
        for k, x in (v.items() if isinstance(v, dict) else enumerate(v) if isinstance(v, list) else ()):
            printable(k, f"{key} key")
            printable(x, f"{key}.{k}" if key else str(k))
    printable(data, "")
    data["name"] = name
    data.pop("aliases", None)
    try:
        prof = devices.schema.profile_from_dict(data, where)
    except (OverflowError, ValueError) as e:           # a number too large for what is computed from it
        raise BadInput(f"{where}: a value out of range ({str(e)[:120]})") from None
    for section, part in [("memory", prof.memory), ("cpu", prof.cpu), ("budgets", prof.budgets),
                        *((f"accelerators[{i}]", a) for i, a in enumerate(prof.accelerators))]:
        for key, v in dataclasses.asdict(part).items():
            if isinstance(v, float) and not math.isfinite(v):
                raise BadInput(f"{where}: {section}.{key}: not a finite number")
    return prof, _profile_toml(prof, remote.name)


def _profile_toml(p: devices.DeviceProfile, host: str) -> str:
    """A checked profile as TOML; brackets in strings escaped, so no value reads as a [table]
    header to ``devices.update.merge`` (which finds [kernels] in the text)."""
    import datetime
    import json

    def q(v):
        if isinstance(v, (list, tuple)):
            return "[" + ", ".join(q(x) for x in v) + "]"
        if isinstance(v, str):
            return json.dumps(v, ensure_ascii=False).replace("[", "\\u005B").replace("]", "\\u005D")
        return repr(v)

    def keys(table, units):
        return [f"{k} = {q(f'{v!r} {units[k]}' if k in units else v)}"
                for k, v in dataclasses.asdict(table).items() if v is not None]

    lines = [f"# measured on {host} by `edgellm device measure --remote` ({datetime.date.today().isoformat()})",
             "schema = 1", f"name = {q(p.name)}", f"description = {q(p.description)}",
             f"runtimes = {q(p.runtimes)}", f"preferred_formats = {q(p.preferred_formats)}", "", "[memory]"]
    lines += keys(p.memory, {"ram": "B", "bandwidth": "B/s", "bandwidth_measured": "B/s", "copy_measured": "B/s"})
    lines += ["", "[cpu]"] + keys(p.cpu, {"freq": "Hz", "fp32_peak": "FLOPS", "fp32_measured": "FLOPS"})
    lines += ["", "[budgets]"] + keys(p.budgets, {"max_memory": "B"})
    for a in p.accelerators:
        lines += ["", "[[accelerators]]"] + keys(a, {"compute": "OPS"})
    if p.kernels:
        from edgellm.devices.measure import kernel_entry

        lines += ["", "[kernels]"] + [kernel_entry(k, rate, q) for k, rate in p.kernels]
    return "\n".join(lines) + "\n"


def run_measure(args) -> int:
    import datetime
    import socket

    name = args.name or default_name()
    if args.remote:
        prof, text = _measure_remote(args, name)
        where = args.remote
    else:
        prof, text = measure(name, stderr_progress, kernels=bool(args.kernels), allow_busy=args.allow_busy,
                             kernel_types=_kernel_types(args.kernels) if args.kernels else ())
        where = socket.gethostname()
    if args.update_profile:
        from edgellm.devices.update import update_profile

        target = devices.find(args.update_profile)
        source = f"measured on {where} by edgellm device measure, {datetime.date.today().isoformat()}"
        out, updated = update_profile(target, text, source, devices.user_dir())
        if args.json:
            print_json(_profile_json(updated))
        else:
            print(f"updated {out} ({target.name}): bandwidth, fp32 rate" + (", kernels" if args.kernels else "")
                  + f" from {where}")
        return 0
    out = args.output or devices.user_dir() / f"{name}.toml"
    atomic_write(out, text.encode("utf-8"))
    if args.json:
        print_json(_profile_json(dataclasses.replace(prof, source=str(out))))
    else:
        print(f"wrote {out}\nuse it with: edgellm plan MODEL --device {name if args.output is None else out}")
    return 0
