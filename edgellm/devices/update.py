"""Folding measurements into an existing device profile (``device measure --update-profile``),
so the next plan for that device uses what was measured there.

Profiles carry their sources in comments, so the file is edited as text, not rewritten from a
parse: the measured keys of ``[memory]`` and ``[cpu]`` are replaced (or added) in place with a
comment naming the measurement, the ``[kernels]`` table is replaced whole, every other line is
kept as it was.  The result is validated as a profile before it is written (atomically).  A
shipped profile is never edited: its updated copy goes to the user's profile folder, where it
takes precedence.
"""

from __future__ import annotations

import re
from pathlib import Path

from edgellm.devices.catalog import MAX_PROFILE_BYTES, parse_toml, profile_from_text
from edgellm.devices.schema import DeviceProfile

MEASURED = {"memory": ("bandwidth_measured", "copy_measured"), "cpu": ("fp32_measured",)}
HEADER = re.compile(r"^\s*\[(?P<name>[^\[\]]+)\]\s*(#.*)?$")


def _sections(lines: list[str]) -> list[tuple[str, int, int]]:
    """(table name, first line, end line) of each [table] ('' for the top)."""
    marks = [("", 0)] + [(m["name"].strip(), i) for i, ln in enumerate(lines) if (m := HEADER.match(ln))]
    return [(name, start, marks[k + 1][1] if k + 1 < len(marks) else len(lines)) for k, (name, start) in enumerate(marks)]


def merge(profile_text: str, measured_text: str, source: str) -> str:
    """``profile_text`` with the measured values of ``measured_text`` (a measured profile's TOML)."""
    measured = parse_toml(measured_text, "the measured profile")
    lines = profile_text.splitlines()
    for table, keys in MEASURED.items():
        for key in keys:
            value = (measured.get(table) or {}).get(key)
            if value is None:
                continue
            new = f'{key} = "{value}"    # {source}'
            sec = next(((s, e) for n, s, e in _sections(lines) if n == table), None)
            if sec is None:
                continue
            start, end = sec
            hit = next((i for i in range(start + 1, end) if re.match(rf"^\s*{key}\s*=", lines[i])), None)
            if hit is None:
                lines.insert(end, new)
            else:
                lines[hit] = new
    kept = []
    skip = False
    for ln in lines:
        m = HEADER.match(ln)
        if m:
            skip = m["name"].strip() == "kernels"
        if not skip:
            kept.append(ln)
    if "[kernels]" in measured_text:
        kept += ["", f"# llama.cpp's kernels per type: {source}", "[kernels]"]
        kept += measured_text.split("[kernels]", 1)[1].strip("\n").splitlines()
    return "\n".join(kept).rstrip("\n") + "\n"


def update_profile(target: DeviceProfile, measured_text: str, source: str, user_dir: Path) -> tuple[Path, DeviceProfile]:
    """Write ``target``'s profile with the measurements folded in; (the file written, the profile)."""
    from edgellm.core.files import atomic_write

    from edgellm.core.files import read_small_text

    src = Path(target.source)
    text = merge(read_small_text(src, MAX_PROFILE_BYTES), measured_text, source)
    out = src if src.resolve().parent == user_dir.resolve() else user_dir / src.name
    prof = profile_from_text(text, str(out))
    atomic_write(out, text.encode("utf-8"))
    return out, prof
