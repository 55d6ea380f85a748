"""Text every machine with Python has: the default held-out text for verification and ``eval``."""

from __future__ import annotations

from pathlib import Path


def held_out_text(limit_bytes: int = 64 << 10) -> str:
    """Text none of edgellm's demo models was trained on: the tail of the Python standard library."""
    import sysconfig

    files = sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"), reverse=True)
    out, total = [], 0
    for p in files:
        text = p.read_text(encoding="utf-8", errors="replace")
        out.append(text)
        total += len(text)
        if total >= limit_bytes:
            break
    return "\n".join(out)[:limit_bytes]
