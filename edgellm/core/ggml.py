"""ggml's tensor types: id -> (name, elements per block, bytes per block), as ggml.c's
``type_traits`` has them.  The one table the GGUF checker, the planner and the writer read."""

from __future__ import annotations

from dataclasses import dataclass


GGML_TYPES = {
    0: ("F32", 1, 4), 1: ("F16", 1, 2), 2: ("Q4_0", 32, 18), 3: ("Q4_1", 32, 20), 6: ("Q5_0", 32, 22),
    7: ("Q5_1", 32, 24), 8: ("Q8_0", 32, 34), 9: ("Q8_1", 32, 36), 10: ("Q2_K", 256, 84),
    11: ("Q3_K", 256, 110), 12: ("Q4_K", 256, 144), 13: ("Q5_K", 256, 176), 14: ("Q6_K", 256, 210),
    15: ("Q8_K", 256, 292), 16: ("IQ2_XXS", 256, 66), 17: ("IQ2_XS", 256, 74), 18: ("IQ3_XXS", 256, 98),
    19: ("IQ1_S", 256, 50), 20: ("IQ4_NL", 32, 18), 21: ("IQ3_S", 256, 110), 22: ("IQ2_S", 256, 82),
    23: ("IQ4_XS", 256, 136), 24: ("I8", 1, 1), 25: ("I16", 1, 2), 26: ("I32", 1, 4), 27: ("I64", 1, 8),
    28: ("F64", 1, 8), 29: ("IQ1_M", 256, 56), 30: ("BF16", 1, 2), 34: ("TQ1_0", 256, 54),
    35: ("TQ2_0", 256, 66),
}


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


def kv_cache_block(kv_cache: str) -> int:
    """Elements per block of a KV cache type (core/names.KV_CACHE_TYPES): what must divide a head."""
    from edgellm.core.names import KV_CACHE_TYPES

    return GGML_TYPES[KV_CACHE_TYPES[kv_cache]][1]
