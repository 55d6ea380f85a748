"""The device profile: what the planner needs to know about a machine, validated on load.

A profile is data (TOML), never code.  Every key is declared here with its parser; an unknown key,
a missing required key, or a value of the wrong type or unit is a :class:`BadInput` naming the
file and the key, so a typo in a user's profile cannot silently become a default.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Callable

from edgellm import units
from edgellm.core.ggml import GGML_TYPES
from edgellm.core.names import FORMAT_NAMES, KERNEL_TYPES, KV_CACHE_TYPES, RUNTIME_NAMES
from edgellm.errors import BadInput

SCHEMA_VERSION = 1

ISA_FEATURES = frozenset({
    # x86
    "sse4_2", "avx", "avx2", "fma", "f16c", "avx_vnni", "avx512f", "avx512_vnni", "avx512_bf16", "amx",
    # arm
    "neon", "fp16", "dotprod", "i8mm", "bf16", "sve", "sve2", "sme",
})
RUNTIMES = RUNTIME_NAMES           # live sets: a format registered later adds its names
FORMATS = FORMAT_NAMES
ACCEL_KINDS = frozenset({"gpu", "npu"})


@dataclass(frozen=True)
class Memory:
    ram: int
    app_share: float
    bandwidth: float | None = None            # theoretical peak, bytes/s
    bandwidth_measured: float | None = None   # sustained multi-threaded read, bytes/s
    copy_measured: float | None = None        # sustained copy (read+write counted once), bytes/s

    @property
    def effective_bandwidth(self) -> float:
        """What a decode loop can stream: the measured read rate, else 60% of the theoretical peak
        (LLM decode on CPUs typically sustains 50-70% of peak DRAM bandwidth)."""
        if self.bandwidth_measured:
            return self.bandwidth_measured
        assert self.bandwidth is not None
        return 0.6 * self.bandwidth


@dataclass(frozen=True)
class Cpu:
    name: str
    arch: str
    cores_big: int
    cores_little: int = 0
    freq: float | None = None                 # Hz, big cores
    isa: tuple[str, ...] = ()
    fp32_peak: float | None = None            # FLOP/s, all big cores
    fp32_measured: float | None = None        # FLOP/s, measured sgemm

    @property
    def effective_fp32(self) -> float:
        """Dense fp32 throughput a real kernel reaches: measured sgemm, else 70% of peak."""
        if self.fp32_measured:
            return self.fp32_measured
        assert self.fp32_peak is not None
        return 0.7 * self.fp32_peak

    def has(self, feature: str) -> bool:
        return feature in self.isa

    @property
    def int8_dot(self) -> bool:
        """Whether int8 dot-product instructions exist (what quantized kernels are built on)."""
        return bool({"dotprod", "i8mm", "avx2", "avx_vnni", "avx512_vnni"} & set(self.isa))


@dataclass(frozen=True)
class Accelerator:
    name: str
    kind: str
    runtime: str
    provider: str
    formats: tuple[str, ...]
    compute: float                            # ops/s at `precision`
    precision: str = "fp16"
    weight_types: tuple[str, ...] = ()        # empty: every weight type of its formats


@dataclass(frozen=True)
class Budgets:
    context: int = 4096
    min_decode_tps: float = 5.0
    max_memory: int | None = None


@dataclass(frozen=True)
class DeviceProfile:
    name: str
    description: str
    memory: Memory
    cpu: Cpu
    runtimes: tuple[str, ...]
    preferred_formats: tuple[str, ...]
    budgets: Budgets = field(default_factory=Budgets)
    accelerators: tuple[Accelerator, ...] = ()
    aliases: tuple[str, ...] = ()             # short names, e.g. "rpi5" for "rpi5-8gb"
    source: str = ""                          # file it came from
    # measured kernel costs: "runtime" and "runtime:GGML_TYPE" ([kernels], edgellm/devices/kernel_model.py)
    kernels: tuple = ()

    def kernel(self, key: str):
        return next((rate for k, rate in self.kernels if k == key), None)

    @property
    def memory_budget(self) -> int:
        """Bytes one app may use: the explicit budget, else RAM x app share."""
        if self.budgets.max_memory is not None:
            return self.budgets.max_memory
        return int(self.memory.ram * self.memory.app_share)


# --- validation --------------------------------------------------------------------------------

def _string(v: Any) -> str:
    if not isinstance(v, str) or not v.strip() or len(v) > 1000:
        raise units.UnitError(f"expected a non-empty string of at most 1000 characters, got {units.show_value(v)}")
    return v


MAX_COUNT = 1 << 31            # cores, a context length: anything larger is a typo or hostile


def _count(v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= MAX_COUNT:
        raise units.UnitError(f"expected a whole number from 0 to {MAX_COUNT:,}, got {units.show_value(v)}")
    return v


def _positive_count(v: Any) -> int:
    n = _count(v)
    if n == 0:
        raise units.UnitError("expected a whole number >= 1, got 0")
    return n


def _fraction(v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v <= 1:
        raise units.UnitError(f"expected a fraction in (0, 1], got {units.show_value(v)}")
    return float(v)


def _positive(v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v <= 1e9:
        raise units.UnitError(f"expected a number > 0 and at most 1e9, got {units.show_value(v)}")
    return float(v)


def _choice(allowed: frozenset[str] | set[str]) -> Callable[[Any], str]:
    def parse(v: Any) -> str:
        if not isinstance(v, str) or v not in allowed:        # a list is not hashable: no TypeError
            raise units.UnitError(f"expected one of {', '.join(sorted(allowed))}; got {units.show_value(v)}")
        return v
    return parse


def _list_of(item: Callable[[Any], str]) -> Callable[[Any], tuple[str, ...]]:
    def parse(v: Any) -> tuple[str, ...]:
        if not isinstance(v, list):
            raise units.UnitError(f"expected a list, got {units.show_value(v)}")
        return tuple(item(x) for x in v)
    return parse


def _positive_bytes(v: Any) -> int:
    n = units.parse_bytes(v)
    if n <= 0:
        raise units.UnitError(f"expected a size > 0, got {units.show_value(v)}")
    return n


# key -> (parser, required).  The dataclass field of the same name receives the parsed value.
_TOP = {"schema": (_positive_count, True), "name": (_string, True), "description": (_string, True),
        "runtimes": (_list_of(_choice(RUNTIMES)), True),
        "preferred_formats": (_list_of(_choice(FORMATS)), True),
        "aliases": (_list_of(_string), False)}
_MEMORY = {"ram": (_positive_bytes, True), "app_share": (_fraction, True),
           "bandwidth": (units.parse_bandwidth, False),
           "bandwidth_measured": (units.parse_bandwidth, False),
           "copy_measured": (units.parse_bandwidth, False)}
_CPU = {"name": (_string, True), "arch": (_choice(frozenset({"arm64", "x86_64"})), True),
        "cores_big": (_positive_count, True), "cores_little": (_count, False),
        "freq": (units.parse_frequency, False), "isa": (_list_of(_choice(ISA_FEATURES)), False),
        "fp32_peak": (units.parse_ops, False), "fp32_measured": (units.parse_ops, False)}
_ACCEL = {"name": (_string, True), "kind": (_choice(ACCEL_KINDS), True),
          "runtime": (_choice(RUNTIMES), True), "provider": (_string, True),
          "formats": (_list_of(_choice(FORMATS)), True), "compute": (units.parse_ops, True),
          "precision": (_choice(frozenset({"fp32", "fp16", "int8"})), False),
          "weight_types": (_list_of(_string), False)}
_BUDGETS = {"context": (_positive_count, False), "min_decode_tps": (_positive, False),
            "max_memory": (_positive_bytes, False)}
_SECTIONS = {"memory", "cpu", "accelerators", "budgets", "kernels"}


def _attention_table(v: Any) -> tuple[tuple[str, int, float], ...]:
    """``{ "f16:64" = 66.2, "q8_0:128" = 23.9 }``: cache type and head size -> ns per query head,
    cached position and layer."""
    if not isinstance(v, dict) or len(v) > 64:
        raise units.UnitError('expected a table of at most 64 entries, e.g. { "f16:64" = 60.5, "q8_0:64" = 31.0 }')
    out = {}
    for key, ns in v.items():
        kv, _, hd = str(key).partition(":")
        if not (kv in KV_CACHE_TYPES and re.fullmatch(r"[1-9][0-9]{0,3}", hd) and int(hd) <= 4096) \
                or (kv, int(hd)) in out:
            raise units.UnitError(f"keys are a cache type ({', '.join(KV_CACHE_TYPES)}) and a head size from 1 to "
                                  f"4096, each once, e.g. \"f16:64\"; got {units.show_value(key)}")
        out[kv, int(hd)] = _positive(ns)
    return tuple((kv, hd, ns) for (kv, hd), ns in sorted(out.items()))


# [kernels] (edgellm/devices/kernel_model.py): "runtime" = its own costs, "runtime:TYPE" = a type's
_KERNEL_COST = {"token_us": (lambda v: _nonneg(v), True), "attention_gflops": (lambda v: _positive(v), False),
                "attention_ns": (_attention_table, False), "prefill_attention_ns": (_attention_table, False),
                "layer_us": (lambda v: _nonneg(v), False),
                "source": (lambda v: _string(v), False)}
_KERNEL_TYPE = {"decode_row_ns": (lambda v: _nonneg(v), True), "decode_weight_ps": (lambda v: _nonneg(v), True),
                "prefill_row_ns": (lambda v: _nonneg(v), False), "prefill_weight_ps": (lambda v: _nonneg(v), False),
                "source": (lambda v: _string(v), False)}
_KERNELS_HINT = ('kernels: expected "runtime" = { token_us, layer_us, attention_gflops, attention_ns, '
                 'prefill_attention_ns } and '
                 '"runtime:GGML_TYPE" = { decode_row_ns, decode_weight_ps, prefill_row_ns, prefill_weight_ps } (rerun edgellm device measure)')


def _nonneg(v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0 or v > 1e9:
        raise units.UnitError(f"expected a finite number from 0 to 1e9, got {units.show_value(v)}")
    return float(v)


def _kernels(data: Any, fail: Callable[[str], BadInput]) -> tuple:
    from edgellm.devices.kernel_model import RuntimeCost, TypeRate

    if not isinstance(data, dict):
        raise fail(_KERNELS_HINT)
    out = []
    for key, value in data.items():
        runtime, _, ty = str(key).partition(":")
        types = KERNEL_TYPES.get(runtime) or {n for n, *_ in GGML_TYPES.values()}
        if runtime not in RUNTIMES or (ty and ty not in types):
            raise fail(f"kernels.{key}: not a runtime ({', '.join(sorted(RUNTIMES))}) or runtime:GGML_TYPE"
                       + "".join(f" ({r}:{'|'.join(sorted(t))})" for r, t in KERNEL_TYPES.items()))
        where = f"kernels.{key}."
        if isinstance(value, dict) and ("decode_bandwidth_share" in value or "prefill_gflops" in value):
            raise fail(f"{where[:-1]}: written by an older edgellm ({_KERNELS_HINT.split('(')[1][:-1]})")
        out.append((str(key), TypeRate(**_section(value, _KERNEL_TYPE, where, fail)) if ty
                    else RuntimeCost(**_section(value, _KERNEL_COST, where, fail))))
    return tuple(out)


def _section(data: Any, spec: dict, where: str, fail: Callable[[str], BadInput]) -> dict:
    if not isinstance(data, dict):
        raise fail(f"{where}: expected a table")
    out = {}
    for key in data:
        if key not in spec:
            known = ", ".join(sorted(spec))
            raise fail(f"{where}{key}: unknown key (known keys here: {known})")
    for key, (parse, required) in spec.items():
        if key not in data:
            if required:
                raise fail(f"{where}{key}: missing required key")
            continue
        try:
            out[key] = parse(data[key])
        except units.UnitError as e:
            raise fail(f"{where}{key}: {e}") from None
    return out


def profile_from_dict(data: dict, source: str) -> DeviceProfile:
    """Validate a parsed TOML document and build the profile; errors name ``source`` and the key."""

    def fail(msg: str) -> BadInput:
        return BadInput(f"{source}: {msg}")

    top = {k: v for k, v in data.items() if k not in _SECTIONS}
    fields = _section(top, _TOP, "", fail)
    if fields["schema"] != SCHEMA_VERSION:
        raise fail(f"schema: version {fields['schema']} is not supported (this edgellm reads {SCHEMA_VERSION})")
    for required in ("memory", "cpu"):
        if required not in data:
            raise fail(f"[{required}]: missing required table")
    memory = Memory(**_section(data["memory"], _MEMORY, "memory.", fail))
    if memory.bandwidth is None and memory.bandwidth_measured is None:
        raise fail("memory.bandwidth: give the theoretical bandwidth, bandwidth_measured, or both")
    cpu = Cpu(**_section(data["cpu"], _CPU, "cpu.", fail))
    if cpu.fp32_peak is None and cpu.fp32_measured is None:
        raise fail("cpu.fp32_peak: give the peak fp32 throughput, fp32_measured, or both")
    accels = data.get("accelerators", [])
    if not isinstance(accels, list):
        raise fail("accelerators: expected an array of tables ([[accelerators]])")
    accelerators = tuple(Accelerator(**_section(a, _ACCEL, f"accelerators[{i}].", fail))
                         for i, a in enumerate(accels))
    budgets = Budgets(**_section(data.get("budgets", {}), _BUDGETS, "budgets.", fail))
    if budgets.max_memory is not None and budgets.max_memory > memory.ram:
        raise fail("budgets.max_memory: larger than memory.ram")
    rates = _kernels(data.get("kernels", {}), fail)
    fields.pop("schema")
    return DeviceProfile(memory=memory, cpu=cpu, accelerators=accelerators, budgets=budgets,
                         source=source, kernels=rates, **fields)
