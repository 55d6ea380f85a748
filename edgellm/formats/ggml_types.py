"""Storage of ggml tensor types: elements per block and bytes per block.

The sizes live once, in :mod:`edgellm.core.ggml` (ggml.c ``type_traits``): a row of ``n`` elements of a block
type takes ``n / block * block_bytes`` bytes, and ``n`` must be a multiple of ``block``.
"""

from __future__ import annotations

from edgellm.core.ggml import TYPES



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
