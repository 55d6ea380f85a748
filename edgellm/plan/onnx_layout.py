"""Bytes per tensor in the ONNX builds edgellm exports, by weight type.

- fp16: every initializer in float16.
- int8: MatMul and Gather weights int8 with one float32 scale and one zero point per row
  (ONNX Runtime dynamic quantization, per channel); norms float32.
- int4: MatMulNBits (ONNX Runtime contrib op): per block of ``b`` weights, b/2 bytes of 4-bit
  values, a float32 scale and a packed 4-bit zero point; the embedding as GatherBlockQuantized,
  shared with the head when the model ties them (as onnxruntime-genai's builder does).
An ONNX graph holds the head as its own MatMul, so an int8 model of a tied checkpoint stores
embedding and head separately.
"""

from __future__ import annotations

import math

from edgellm.models.config import ModelConfig
from edgellm.models.tensors import TensorSpec

KV_BYTES = {"fp16": 2.0, "int8": 4.0, "int4": 4.0}   # cache dtype follows the model's io dtype


def tensor_bytes(t: TensorSpec, quant: str, block: int | None) -> int:
    if not t.is_matrix:
        return t.n_elements * (2 if quant == "fp16" else 4)
    if quant == "fp16":
        return t.n_elements * 2
    if quant == "int8":
        return t.n_elements + t.ne1 * 5
    assert block is not None
    blocks = math.ceil(t.ne0 / block) * t.ne1
    return blocks * (block // 2 + 4) + math.ceil(blocks / 2)


def weight_bytes(model: ModelConfig, quant: str, block: int | None) -> int:
    total = sum(tensor_bytes(t, quant, block) for t in model.tensors)
    if model.tied_embeddings and quant != "int4":
        emb = next(t for t in model.tensors if t.name == "token_embd.weight")
        total += tensor_bytes(emb, quant, block)      # the head, stored again as a MatMul weight
    return total
