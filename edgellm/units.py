"""Quantities with units, as written in device profiles and on the command line.

Profiles and flags say ``"8 GiB"``, ``"17.1 GB/s"``, ``"153.6 GFLOPS"``; internally everything is
plain SI base numbers: bytes, bytes per second, operations per second.  A value with the wrong
kind of unit ("17 GB" where a bandwidth is expected) is an error, never a guess.
"""

from __future__ import annotations

import math
import re

_SIZE = {
    "b": 1, "kb": 1e3, "mb": 1e6, "gb": 1e9, "tb": 1e12,
    "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
}
_RATE_PREFIX = {"": 1, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12, "p": 1e15}
_NUMBER = r"([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)"


class UnitError(ValueError):
    """The text is not a quantity of the expected kind; the message says what was expected."""


# The largest value of each kind taken at all: far past any machine (an exabyte of memory, a
# petabyte per second, an exa-operation per second, 100 GHz), so that a typo or a hostile profile
# ("1e309 GB/s" is infinity, 10^30 overflows what is computed from it) is refused by name.
MAX_BYTES, MAX_BANDWIDTH, MAX_OPS, MAX_FREQUENCY = 2 ** 60, 1e15, 1e18, 1e11
_TOP = {MAX_BYTES: "1 EiB", MAX_BANDWIDTH: "1 PB/s", MAX_OPS: "1 EOPS", MAX_FREQUENCY: "100 GHz"}


def show_value(value) -> str:
    """A value from a profile or a flag, for an error line: short (a huge number's repr is slow,
    or refused, and a long string would drown the line)."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 100:
        return f"a {value.bit_length()}-bit number"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _split(text: str, kind: str, example: str) -> tuple[float, str]:
    if isinstance(text, bool) or not isinstance(text, (str, int, float)):
        raise UnitError(f"expected {kind} like '{example}', got {show_value(text)}")
    if isinstance(text, int) and abs(text) > 10 ** 30:         # str() of a huge int is slow or refused
        raise UnitError(f"{kind.split()[-1]} of {text.bit_length()} bits is out of range")
    m = re.fullmatch(_NUMBER + r"\s*([A-Za-z/]*)", str(text).strip()[:200])
    if not m:
        raise UnitError(f"expected {kind} like '{example}', got {show_value(text)}")
    return float(m.group(1)), m.group(2)


def _in_range(value: float, low_ok: bool, top: float, text, kind: str) -> float:
    """``value`` (base units) when finite, above 0 (or at 0 with ``low_ok``) and at most ``top``."""
    if not (math.isfinite(value) and (value >= 0 if low_ok else value > 0) and value <= top):
        raise UnitError(f"{kind} {show_value(text)} is out of range (expected {'0' if low_ok else 'more than 0'} "
                        f"up to {_TOP[top]})")
    return value


def parse_bytes(text: str | int) -> int:
    """'8 GiB' -> 8589934592; '3GB' -> 3000000000; a bare number is bytes."""
    value, unit = _split(text, "a size", "8 GiB")
    factor = _SIZE.get(unit.lower() or "b")
    if factor is None:
        raise UnitError(f"expected a size like '8 GiB' or '3 GB', got {show_value(text)}")
    return int(round(_in_range(value * factor, True, MAX_BYTES, text, "size")))


def parse_bandwidth(text: str) -> float:
    """'17.1 GB/s' -> 1.71e10 bytes per second."""
    value, unit = _split(text, "a bandwidth", "17.1 GB/s")
    low = unit.lower()
    if not low.endswith("/s") or low[:-2] not in _SIZE:
        raise UnitError(f"expected a bandwidth like '17.1 GB/s', got {show_value(text)}")
    return _in_range(value * _SIZE[low[:-2]], False, MAX_BANDWIDTH, text, "bandwidth")


def parse_ops(text: str) -> float:
    """'153.6 GFLOPS' or '45 TOPS' -> operations per second."""
    value, unit = _split(text, "a throughput", "150 GFLOPS")
    m = re.fullmatch(r"([kKmMgGtTpP]?)(FLOPS|OPS|flops|ops)", unit)
    if not m:
        raise UnitError(f"expected a throughput like '150 GFLOPS' or '45 TOPS', got {show_value(text)}")
    return _in_range(value * _RATE_PREFIX[m.group(1).lower()], False, MAX_OPS, text, "throughput")


def parse_frequency(text: str) -> float:
    """'2.4 GHz' -> 2.4e9."""
    value, unit = _split(text, "a frequency", "2.4 GHz")
    m = re.fullmatch(r"([kKmMgG]?)[hH]z", unit)
    if not m:
        raise UnitError(f"expected a frequency like '2.4 GHz', got {show_value(text)}")
    return _in_range(value * _RATE_PREFIX[m.group(1).lower()], False, MAX_FREQUENCY, text, "frequency")


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
