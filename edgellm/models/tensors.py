"""The tensors a model has, named and shaped as they appear in a GGUF file.

Shapes follow GGUF's order: ``ne0`` is the row length (the input dimension of a linear layer), the
one that block quantization runs along; ``ne1`` is the number of rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property


@dataclass(frozen=True)
class TensorSpec:
    name: str                 # GGUF name, e.g. "blk.3.ffn_down.weight"
    ne0: int                  # row length
    ne1: int = 1              # rows (1 for vectors)
    is_param: bool = True     # False for buffers such as rope frequency tables
    experts: int = 1          # ne2: a mixture-of-experts layer's experts stacked in one tensor
    used: int = 1             # of which a token multiplies this many (the router's top-k)

    @property
    def n_elements(self) -> int:
        return self.ne0 * self.ne1 * self.experts

    @property
    def active_elements(self) -> int:
        """Weights one token multiplies: all of a dense matrix, ``used`` of ``experts`` experts."""
        return self.ne0 * self.ne1 * min(self.used, self.experts)

    @property
    def active_rows(self) -> int:
        return self.ne1 * min(self.used, self.experts)

    @property
    def is_matrix(self) -> bool:
        return self.ne1 > 1

    @cached_property
    def layer(self) -> int | None:
        if self.name.startswith("blk."):
            return int(self.name.split(".")[1])
        return None

    @cached_property
    def quantizable(self) -> bool:
        """llama.cpp quantizes 2-D weights only, never norms or position embeddings
        (llama-quant.cpp, tensor_allows_quantization)."""
        return (self.is_matrix and self.name.endswith("weight") and not self.kept_f32
                and "_norm.weight" not in self.name and self.name != "position_embd.weight")

    @property
    def kept_f32(self) -> bool:
        """Matrices llama.cpp keeps in float32 and never quantizes (its converter's list and
        llama-quant.cpp): a mixture of experts' router, LFM2's short-convolution kernels."""
        return "ffn_gate_inp" in self.name or "shortconv.conv.weight" in self.name
