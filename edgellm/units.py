"""Quantities with units, as written in device profiles and on the command line.

Profiles and flags say ``"8 GiB"``, ``"17.1 GB/s"``, ``"153.6 GFLOPS"``; internally everything is
plain SI base numbers: bytes, bytes per second, operations per second.  A value with the wrong
kind of unit ("17 GB" where a bandwidth is expected) is an error, never a guess.
"""

from __future__ import annotations

import re

_SIZE = {
    "b": 1, "kb": 1e3, "mb": 1e6, "gb": 1e9, "tb": 1e12,
    "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
}
_RATE_PREFIX = {"": 1, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12, "p": 1e15}
_NUMBER = r"([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)"


class UnitError(ValueError):
    """The text is not a quantity of the expected kind; the message says what was expected."""


def _split(text: str, kind: str, example: str) -> tuple[float, str]:
    if isinstance(text, bool) or not isinstance(text, (str, int, float)):
        raise UnitError(f"expected {kind} like '{example}', got {text!r}")
    m = re.fullmatch(_NUMBER + r"\s*([A-Za-z/]*)", str(text).strip())
    if not m:
        raise UnitError(f"expected {kind} like '{example}', got {text!r}")
    return float(m.group(1)), m.group(2)


def parse_bytes(text: str | int) -> int:
    """'8 GiB' -> 8589934592; '3GB' -> 3000000000; a bare number is bytes."""
    value, unit = _split(text, "a size", "8 GiB")
    factor = _SIZE.get(unit.lower() or "b")
    if factor is None:
        raise UnitError(f"expected a size like '8 GiB' or '3 GB', got {text!r}")
    return int(round(value * factor))


def parse_bandwidth(text: str) -> float:
    """'17.1 GB/s' -> 1.71e10 bytes per second."""
    value, unit = _split(text, "a bandwidth", "17.1 GB/s")
    low = unit.lower()
    if not low.endswith("/s") or low[:-2] not in _SIZE:
        raise UnitError(f"expected a bandwidth like '17.1 GB/s', got {text!r}")
    return value * _SIZE[low[:-2]]


def parse_ops(text: str) -> float:
    """'153.6 GFLOPS' or '45 TOPS' -> operations per second."""
    value, unit = _split(text, "a throughput", "150 GFLOPS")
    m = re.fullmatch(r"([kKmMgGtTpP]?)(FLOPS|OPS|flops|ops)", unit)
    if not m:
        raise UnitError(f"expected a throughput like '150 GFLOPS' or '45 TOPS', got {text!r}")
    return value * _RATE_PREFIX[m.group(1).lower()]


def parse_frequency(text: str) -> float:
    """'2.4 GHz' -> 2.4e9."""
    value, unit = _split(text, "a frequency", "2.4 GHz")
    m = re.fullmatch(r"([kKmMgG]?)[hH]z", unit)
    if not m:
        raise UnitError(f"expected a frequency like '2.4 GHz', got {text!r}")
    return value * _RATE_PREFIX[m.group(1).lower()]


def fmt_bytes(n: float) -> str:
    """Binary units, three significant digits: 395463808 -> '377 MiB'."""
    for unit, factor in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= factor:
            v = n / factor
            return f"{v:.3g} {unit}" if v < 100 else f"{v:.0f} {unit}"
    return f"{int(n)} B"


def fmt_rate(ops: float, unit: str) -> str:
    """1.71e10, 'B/s' -> '17.1 GB/s'."""
    for prefix, factor in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(ops) >= factor:
            return f"{ops / factor:.3g} {prefix}{unit}"
    return f"{ops:.3g} {unit}"


def fmt_count(n: float) -> str:
    """494032768 -> '494M'; 1.2e9 -> '1.2B'."""
    for suffix, factor in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= factor:
            v = n / factor
            return f"{v:.3g}{suffix}" if v < 100 else f"{v:.0f}{suffix}"
    return str(int(n))
