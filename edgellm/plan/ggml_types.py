"""Storage of ggml tensor types: elements per block and bytes per block.

From ggml's type traits (ggml/src/ggml.c, ``type_traits``): a row of ``n`` elements of a block
type takes ``n / block * block_bytes`` bytes, and ``n`` must be a multiple of ``block``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class GgmlType:
    name: str
    block: int          # elements per block
    block_bytes: int    # bytes per block

    @property
    def bits_per_weight(self) -> float:
        return 8 * self.block_bytes / self.block

    def row_bytes(self, n: int) -> int:
        if n % self.block:
            raise ValueError(f"{self.name} needs rows that are a multiple of {self.block}, not {n}")
        return n // self.block * self.block_bytes


TYPES = {t.name: t for t in (
    GgmlType("F32", 1, 4), GgmlType("F16", 1, 2), GgmlType("BF16", 1, 2),
    GgmlType("Q4_0", 32, 18), GgmlType("Q4_1", 32, 20), GgmlType("Q5_0", 32, 22),
    GgmlType("Q5_1", 32, 24), GgmlType("Q8_0", 32, 34), GgmlType("IQ4_NL", 32, 18),
    GgmlType("Q2_K", 256, 84), GgmlType("Q3_K", 256, 110), GgmlType("Q4_K", 256, 144),
    GgmlType("Q5_K", 256, 176), GgmlType("Q6_K", 256, 210), GgmlType("IQ4_XS", 256, 136),
)}

# llama.cpp's fallback when a row is not a multiple of the type's block
# (llama-quant.cpp, tensor_type_fallback); F16 when the fallback does not fit either.
FALLBACK = {"Q2_K": "Q4_0", "Q3_K": "Q4_0", "Q4_K": "Q5_0", "Q5_K": "Q5_1", "Q6_K": "Q8_0",
            "IQ4_XS": "IQ4_NL"}


def fit_type(name: str, row: int) -> str:
    """The type llama.cpp actually stores for a row length, after its fallbacks."""
    t = TYPES[name]
    if row % t.block == 0:
        return name
    fallback = FALLBACK.get(name, name)
    return fallback if row % TYPES[fallback].block == 0 else "F16"
