"""Facts about the machine this runs on: CPU model, cores, ISA features, RAM.  Standard library only.

Linux reads /proc and /sys (and the cgroup memory limit, so a container reports what it may use);
macOS asks sysctl.  Anything that cannot be found is None, never a guess.
"""

from __future__ import annotations

import os
import platform
import subprocess
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

# /proc/cpuinfo flag -> edgellm ISA feature name (edgellm/devices/schema.py ISA_FEATURES)
_X86_FLAGS = {"sse4_2": "sse4_2", "avx": "avx", "avx2": "avx2", "fma": "fma", "f16c": "f16c",
              "avx_vnni": "avx_vnni", "avx512f": "avx512f", "avx512_vnni": "avx512_vnni",
              "avx512_bf16": "avx512_bf16", "amx_tile": "amx"}
_ARM_FLAGS = {"asimd": "neon", "asimdhp": "fp16", "asimddp": "dotprod", "i8mm": "i8mm",
              "bf16": "bf16", "sve": "sve", "sve2": "sve2", "sme": "sme"}
_MAC_FLAGS = {"hw.optional.neon": "neon", "hw.optional.arm.FEAT_FP16": "fp16",
              "hw.optional.arm.FEAT_DotProd": "dotprod", "hw.optional.arm.FEAT_I8MM": "i8mm",
              "hw.optional.arm.FEAT_BF16": "bf16", "hw.optional.arm.FEAT_SME": "sme"}


@dataclass(frozen=True)
class HostInfo:
    cpu_name: str
    arch: str                 # "x86_64" or "arm64"
    cores_big: int
    cores_little: int
    freq_hz: float | None
    isa: tuple[str, ...]
    ram_bytes: int


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text()
    except OSError:
        return None


def _sysctl(name: str) -> str | None:
    try:
        out = subprocess.run(["sysctl", "-n", name], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _cpuinfo_fields() -> dict[str, str]:
    fields: dict[str, str] = {}
    for line in (_read("/proc/cpuinfo") or "").splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    return fields


def _usable_cpus() -> list[int]:
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:
        return list(range(os.cpu_count() or 1))


def _core_split(cpus: list[int]) -> tuple[int, int, float | None]:
    """Big and little cores from each CPU's maximum clock (one distinct clock: all big)."""
    freqs = Counter()
    for c in cpus:
        khz = _read(f"/sys/devices/system/cpu/cpu{c}/cpufreq/cpuinfo_max_freq")
        if khz and khz.strip().isdigit():
            freqs[int(khz)] += 1
    if not freqs:
        return len(cpus), 0, None
    top = max(freqs)
    return freqs[top], sum(freqs.values()) - freqs[top], top * 1e3


def _ram_bytes() -> int:
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    limit = (_read("/sys/fs/cgroup/memory.max") or "").strip()
    if limit.isdigit():
        total = min(total, int(limit))
    return total


def available_bytes() -> int | None:
    """Memory that can be had now without swapping (Linux: MemAvailable, page cache counted as
    reclaimable), or None where it cannot be read."""
    for line in (_read("/proc/meminfo") or "").splitlines():
        key, _, rest = line.partition(":")
        fields = rest.split()
        if key == "MemAvailable" and fields and fields[0].isdigit() and len(fields[0]) <= 15:
            return int(fields[0]) * 1024
    return None


def last_level_cache_bytes() -> int | None:
    """The largest CPU cache (Linux: sysfs; macOS: sysctl), or None where it cannot be read."""
    if platform.system() == "Darwin":
        sizes = [_sysctl(n) for n in ("hw.l3cachesize", "hw.perflevel0.l2cachesize", "hw.l2cachesize")]
    else:
        base = Path("/sys/devices/system/cpu/cpu0/cache")
        sizes = [_read(str(d / "size")) for d in sorted(base.glob("index[0-9]*"))] if base.is_dir() else []
    return max((b for raw in sizes if (b := cache_size(raw))), default=None)


def cache_size(raw: str | None) -> int | None:
    """sysfs's "491520K" (or sysctl's bytes) -> bytes; None for anything else."""
    text = (raw or "").strip().upper()
    scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
    digits = text[:-1] if scale > 1 else text
    return int(digits) * scale if digits.isascii() and digits.isdigit() and len(digits) <= 12 and int(digits) else None


def probe() -> HostInfo:
    """Describe this machine."""
    machine = platform.machine().lower()
    arch = "arm64" if machine in ("arm64", "aarch64") else "x86_64"
    if platform.system() == "Darwin":
        big = int(_sysctl("hw.perflevel0.physicalcpu") or os.cpu_count() or 1)
        little = int(_sysctl("hw.perflevel1.physicalcpu") or 0)
        isa = tuple(sorted(v for k, v in _MAC_FLAGS.items() if _sysctl(k) == "1"))
        name = _sysctl("machdep.cpu.brand_string") or platform.processor() or machine
        ram = int(_sysctl("hw.memsize") or 0)
        return HostInfo(name, arch, big, little, None, isa, ram)
    info = _cpuinfo_fields()
    flags = set((info.get("flags") or info.get("Features") or "").split())
    table = _X86_FLAGS if arch == "x86_64" else _ARM_FLAGS
    isa = tuple(sorted({v for k, v in table.items() if k in flags}))
    big, little, freq = _core_split(_usable_cpus())
    if freq is None and info.get("cpu MHz"):
        freq = float(info["cpu MHz"]) * 1e6
    name = info.get("model name") or info.get("Model") or info.get("Hardware") or platform.processor() or machine
    return HostInfo(name, arch, big, little, freq, isa, _ram_bytes())
