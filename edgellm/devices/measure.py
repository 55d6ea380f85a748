"""``edgellm device measure``: a profile of the machine edgellm runs on, from measurements.

Host facts come from :mod:`edgellm.runtime.hostinfo`, bandwidth and matmul rate from
:mod:`edgellm.runtime.membench` (numpy only, so it runs on the device itself).  The profile is
validated with the same schema as any other before it is written.
"""

from __future__ import annotations

import datetime as _dt
import json
import re
import socket
import tomllib
from typing import Callable

from edgellm.devices.kernel_model import RuntimeCost
from edgellm.devices.schema import DeviceProfile, profile_from_dict
from edgellm.errors import MachineBusy
from edgellm.units import fmt_bytes, fmt_rate


DRIFT_WARN = 0.15         # the plan's own target: a machine that moves more cannot be planned finer


def default_name() -> str:
    host = re.sub(r"[^a-z0-9-]+", "-", socket.gethostname().lower()).strip("-") or "machine"
    return f"local-{host}"


def _q(value: str) -> str:
    return json.dumps(value)       # a JSON string is a valid TOML basic string


def kernel_entry(key: str, r, q: Callable[[str], str] = _q) -> str:
    """One line of a profile's [kernels]: a runtime's costs (RuntimeCost) or a type's rates
    (TypeRate), as the schema reads them back; ``q`` quotes the strings."""
    fields = ("token_us", "layer_us", "attention_gflops") if isinstance(r, RuntimeCost) else \
        ("decode_row_ns", "decode_weight_ps", "prefill_row_ns", "prefill_weight_ps")
    values = [f"{f} = {getattr(r, f)!r}" for f in fields if getattr(r, f) is not None]
    for table in ("attention_ns", "prefill_attention_ns") if isinstance(r, RuntimeCost) else ():
        if getattr(r, table):                               # checked names: a cache type and a head size
            values.append(f"{table} = {{ " + ", ".join(f'"{kv}:{hd}" = {ns!r}' for kv, hd, ns in getattr(r, table))
                          + " }")
    if r.source:
        values.append(f"source = {q(r.source)}")
    return f"{q(key)} = {{ " + ", ".join(values) + " }"


def measure(name: str, progress: Callable[[str], None] = lambda s: None,
            buffer_bytes: int = 512 << 20, kernels: bool = True,
            kernel_types: tuple[str, ...] = (), allow_busy: bool = False) -> tuple[DeviceProfile, str]:
    """Measure this machine; return the validated profile and its TOML text.  ``kernels``: also
    the runtimes' kernel rates, llama.cpp's per ggml tensor type and ONNX Runtime's per weight type
    (``kernel_types``, default all; about 5 s each).  MachineBusy when other processes use the CPU
    (before the start, or during a timing more than TRIES times); with ``allow_busy`` the figures
    are kept and the profile says which were taken on a busy machine."""
    from edgellm.runtime import busy, hostinfo, membench

    progress("reading CPU and memory facts")
    host = hostinfo.probe()
    threads = host.cores_big + host.cores_little
    others = busy.others_now(threads=threads)
    notes: list[str] | None = [] if allow_busy else None
    if others is not None and others > busy.MAX_OTHERS and notes is not None:
        progress(f"warning: other processes use {others:.2f} cores: measuring anyway (--allow-busy)")
        notes.append(f"at the start: other processes used {others:.2f} cores")
    elif others is not None and others > busy.MAX_OTHERS:
        raise MachineBusy(f"the machine is busy: other processes use {others:.2f} cores now, and every figure "
                          "measured meanwhile would be wrong.  Stop them (see `top`) and rerun edgellm device measure")
    buffer_bytes = min(buffer_bytes, host.ram_bytes // 8)
    progress(f"measuring memory bandwidth ({threads} threads, {fmt_bytes(2 * buffer_bytes)} of buffers)")
    alone = lambda others, _: busy.verdict(others)       # noqa: E731
    bw = busy.quiet("memory bandwidth", lambda: membench.memory_bandwidth(threads, buffer_bytes), alone, progress,
                    notes, threads)
    progress("measuring fp32 matmul throughput")
    flops = busy.quiet("the fp32 matmul rate", lambda: max(membench.matmul_throughput(1024),
                                                           membench.matmul_throughput(2048, passes=3)), alone, progress,
                       notes, threads)
    today = _dt.date.today().isoformat()
    by = f"measured by edgellm device measure, {today}"
    freq = f'freq = "{host.freq_hz / 1e9:.2f} GHz"              # {by} (max clock)\n' if host.freq_hz else ""
    text = f"""# {name}: measured on this machine by `edgellm device measure` ({today}).
# Edit app_share and [budgets] to suit the app; rerun the command to refresh the measurements.
schema = 1
name = {_q(name)}
description = {_q(f"{host.cpu_name}, {fmt_bytes(host.ram_bytes)} (measured)")}
runtimes = ["llama.cpp", "onnxruntime"]
preferred_formats = ["gguf", "onnx"]

[memory]
ram = "{host.ram_bytes} B"                 # {by} (physical RAM, or the cgroup limit if lower)
app_share = 0.7                            # assumption: edit to what your app may use
bandwidth_measured = "{bw.read / 1e9:.2f} GB/s"   # {by}: {bw.threads}-thread read of {fmt_bytes(bw.buffer_bytes)}
copy_measured = "{bw.copy / 1e9:.2f} GB/s"        # {by}: {bw.threads}-thread copy, read + write bytes

[cpu]
name = {_q(host.cpu_name)}
arch = "{host.arch}"
cores_big = {host.cores_big}                              # {by}
cores_little = {host.cores_little}                           # {by}
{freq}isa = {json.dumps(list(host.isa))}   # {by} (/proc/cpuinfo or sysctl)
fp32_measured = "{flops / 1e9:.1f} GFLOPS"        # {by}: numpy sgemm, all threads
"""
    if kernels:
        from edgellm.devices.kernels import GGML_TYPES, measure_kernels, measure_onnx_kernels
        from edgellm.runtime.onnx_probe import WEIGHT_TYPES

        wanted = kernel_types or GGML_TYPES + WEIGHT_TYPES
        costs, report = {}, {}
        if ggml := tuple(t for t in wanted if t in GGML_TYPES):
            costs.update(measure_kernels(threads, progress, ggml, source=by, report=report, notes=notes))
        if onnx := tuple(t for t in wanted if t in WEIGHT_TYPES):
            costs.update(measure_onnx_kernels(threads, progress, onnx, source=by, notes=notes))
        if report.get("drift", 0.0) > DRIFT_WARN:
            progress(f"warning: this machine's speed moved by {report['drift']:.0%} while it was measured (a shared "
                     "or throttling machine): plans for it are no finer than that; a quieter machine measures better")
            text += (f"\n# this machine's speed moved by {report['drift']:.0%} while it was measured: "
                     "the rates below are no finer than that\n")
        text += ("\n# the runtimes' kernels: per weight type, seconds per matrix row and per weight, measured with\n"
                 "# llama-cpp-python and onnxruntime themselves on random-weight probe models (edgellm/devices/kernels.py,\n"
                 "# edgellm/devices/kernel_model.py); the planner sums a build's tensors at their own type's rates\n"
                 "[kernels]\n")
        text += "".join(kernel_entry(key, r) + "\n" for key, r in costs.items())
    if notes:                     # --allow-busy: the profile says which figures a busy machine gave
        head, _, rest = text.partition("\n")
        text = head + "\n# MEASURED ON A BUSY MACHINE (--allow-busy); these figures are suspect:\n" + \
            "".join(f"#   {n}\n" for n in notes) + rest
    prof = profile_from_dict(tomllib.loads(text), f"<measured {name}>")
    progress(f"read {fmt_rate(bw.read, 'B/s')}, copy {fmt_rate(bw.copy, 'B/s')}, "
             f"matmul {fmt_rate(flops, 'FLOPS')}")
    return prof, text


