"""Storage of ggml tensor types: elements per block and bytes per block.

The sizes live once, in :mod:`edgellm.runtime.gguf_check` (ggml.c ``type_traits``): a row of ``n`` elements of a block
type takes ``n / block * block_bytes`` bytes, and ``n`` must be a multiple of ``block``.
"""

from __future__ import annotations

from dataclasses import dataclass

from edgellm.runtime.gguf_check import GGML_TYPES


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


TYPES = {name: GgmlType(name, block, block_bytes) for name, block, block_bytes in GGML_TYPES.values()}

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
