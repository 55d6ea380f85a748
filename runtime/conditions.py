"""The conditions that move a profile's numbers, read before and after it: CPU model, cores,
governor, current and maximum clock, temperatures, throttling, energy.

Everything is read from what the platform exposes (Linux /sys and /proc, a Raspberry Pi's
``vcgencmd``, powercap/RAPL); what a machine does not expose is recorded as ``"unavailable"``
with the reason, never guessed.  Standard library only: this runs on the device.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

UNAVAILABLE = "unavailable"
CPUFREQ = Path("/sys/devices/system/cpu")
THERMAL = Path("/sys/class/thermal")
POWERCAP = Path("/sys/class/powercap")
# vcgencmd get_throttled bits (Raspberry Pi documentation, "vcgencmd": get_throttled)
THROTTLE_BITS = {0: "under-voltage now", 1: "ARM frequency capped now", 2: "throttled now",
                 3: "soft temperature limit now", 16: "under-voltage has occurred",
                 17: "ARM frequency capping has occurred", 18: "throttling has occurred",
                 19: "soft temperature limit has occurred"}


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _missing(why: str) -> dict:
    return {"value": UNAVAILABLE, "why": why}


def cpu_model() -> str:
    from edgellm.runtime.hostinfo import probe

    try:
        return probe().cpu_name
    except Exception:  # noqa: BLE001 - a description, never a reason to fail a profile
        return UNAVAILABLE


def frequencies() -> dict:
    cpus = sorted(CPUFREQ.glob("cpu[0-9]*/cpufreq"), key=lambda p: int(p.parent.name[3:]))
    if not cpus:
        return {"governor": UNAVAILABLE, "cur_khz": UNAVAILABLE, "max_khz": UNAVAILABLE,
                "why": "no cpufreq in /sys (a VM or container, or not Linux)"}
    def each(name):
        vals = [_read(c / name) for c in cpus]
        return [int(v) if v and v.isdigit() else None for v in vals]
    govs = sorted({g for c in cpus if (g := _read(c / "scaling_governor"))})
    return {"governor": ",".join(govs) or UNAVAILABLE, "cur_khz": each("scaling_cur_freq"),
            "max_khz": each("cpuinfo_max_freq")}


def temperatures() -> dict:
    zones = sorted(THERMAL.glob("thermal_zone*"))
    out = {}
    for z in zones:
        t = _read(z / "temp")
        if t and t.lstrip("-").isdigit():
            out[_read(z / "type") or z.name] = int(t) / 1000
    return out or _missing("no readable thermal zones in /sys/class/thermal")


def throttling() -> dict:
    exe = shutil.which("vcgencmd")
    if exe is None:
        return _missing("no vcgencmd (not a Raspberry Pi, or its tools are not installed)")
    try:
        out = subprocess.run([exe, "get_throttled"], capture_output=True, text=True, timeout=5).stdout
        bits = int(out.strip().split("=")[1], 16)
    except (OSError, subprocess.SubprocessError, IndexError, ValueError):
        return _missing("vcgencmd get_throttled gave no answer")
    return {"raw": hex(bits), "flags": [name for b, name in THROTTLE_BITS.items() if bits >> b & 1]}


def energy_uj() -> dict[str, int] | None:
    """Cumulative energy counters (microjoules) of the RAPL packages, or None if none is readable
    (they are root-only on many distributions)."""
    out = {}
    for zone in sorted(POWERCAP.glob("intel-rapl:[0-9]*")):
        if zone.name.count(":") != 1:
            continue
        v = _read(zone / "energy_uj")
        if v and v.isdigit():
            out[_read(zone / "name") or zone.name] = int(v)
    return out or None


def snapshot(threads: int) -> dict:
    return {"time": time.time(), "cpu_model": cpu_model(), "cores": os.cpu_count() or UNAVAILABLE,
            "threads_used": threads, **frequencies(), "temperatures_c": temperatures(),
            "throttling": throttling()}


def joules(before: dict[str, int] | None, after: dict[str, int] | None) -> float | str:
    """Energy used between two ``energy_uj()`` readings (counters wrap: negative spans dropped)."""
    if not before or not after:
        return UNAVAILABLE
    spans = [after[k] - before[k] for k in before if k in after and after[k] >= before[k]]
    return sum(spans) / 1e6 if spans else UNAVAILABLE
