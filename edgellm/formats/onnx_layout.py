"""Bytes per tensor in the ONNX builds edgellm exports (exporters/onnx/graph.py), by weight type;
checked against real files in tests/test_onnx.py.

- fp32: every initializer float32.  fp16: matrices stored float16 (the file), widened once to
  float32 at load (ONNX Runtime's x86 kernels compute in float32), so resident memory is fp32's.
- int4: MatMulNBits blocks of ``b`` weights along the input dimension: b/2 bytes of values, a
  float32 scale and a 4-bit zero point per block.  The embedding is the same blocks read by
  GatherBlockQuantized; a tied head shares them, an untied head has its own.
- int8: MatMulNBits blocks of 32 weights, one byte each plus a float32 scale and an 8-bit zero point
  per block (b + 4 + 1 bytes); the embedding is the same blocks, shared by a tied head.
- vectors (norms, biases) float32; rotary cos/sin tables float32, max_context x head_dim/2 each.
- a float graph holds the head as its own MatMul, so a tied checkpoint stores embedding and head
  separately.
"""

from __future__ import annotations

import math

from edgellm.models.config import ModelConfig
from edgellm.models.tensors import TensorSpec


INT8_EMBED_BLOCK = 32       # int8's blocks (MatMulNBits and the embedding's GatherBlockQuantized)


def tensor_bytes(t: TensorSpec, quant: str, block: int | None, resident: bool = False) -> int:
    if not t.is_matrix:
        return t.n_elements * 4
    if t.name == "position_embd.weight":          # GPT-2's learned positions stay float
        quant = "fp32" if quant != "fp16" else quant
    if quant == "fp32" or (quant == "fp16" and resident):
        return t.n_elements * 4
    if quant == "fp16":
        return t.n_elements * 2
    if t.experts > 1:                # a mixture's experts, as ONNX Runtime's QMoE takes them: symmetric
        per_row = 1 if quant == "int8" else math.ceil(t.ne0 / block)       # codes, a float32 scale a row
        return t.experts * t.ne1 * (t.ne0 * (8 if quant == "int8" else 4) // 8 + 4 * per_row)   # (int4: a block)
    if quant == "int8":
        block = INT8_EMBED_BLOCK
    assert block is not None
    per_col = math.ceil(t.ne0 / block)
    blocks = per_col * t.ne1
    if quant == "int8":
        return blocks * (block + 4 + 1)
    return blocks * (block // 2 + 4) + t.ne1 * math.ceil(per_col / 2)


def weight_bytes(model: ModelConfig, quant: str, block: int | None, resident: bool = False) -> int:
    """All initializers: the file's bytes (``resident``: after load-time widening of fp16)."""
    total = sum(tensor_bytes(t, quant, block, resident) for t in model.tensors
                if t.is_param or t.name == "token_embd.weight")
    emb = next(t for t in model.tensors if t.name == "token_embd.weight")
    if model.tied_embeddings and quant in ("fp32", "fp16"):
        total += tensor_bytes(emb, quant, block, resident)      # the head, stored again as a MatMul weight
    return total + rotary_bytes(model)


def rotary_bytes(model: ModelConfig) -> int:
    """cos and sin tables; a second pair where windowed layers have their own rope base (Gemma 3);
    none for learned positions (GPT-2)."""
    if any(t.name == "position_embd.weight" for t in model.tensors):
        return 0
    from edgellm.models.families.rope import longrope_original, rope_kind, rotary_dim

    tables = 2 if model.raw.get("rope_local_base_freq") and any(w is not None for w in model.windows) else 1
    if rope_kind(model.raw) in ("longrope", "su") and model.max_context > longrope_original(model.raw, model.max_context):
        tables = 2                      # long-rope: a short and a long pair (Phi-3.5/4-mini)
    return tables * 2 * model.max_context * (rotary_dim(model.raw, model.head_dim) // 2) * 4


def file_overhead(model: ModelConfig, quant: str) -> int:
    """Bytes in the files beyond the weights: the graph protobuf (~3 kB per layer) and the padding
    that aligns each external initializer to 4 KiB (often none: most sizes are multiples of it)."""
    arrays_per_matrix = 3 if quant in ("int4", "int8") else 1      # values, scales, zero points
    n_arrays = sum(arrays_per_matrix if t.is_matrix else 1 for t in model.tensors if t.is_param) + 2
    return 6000 + 3000 * model.n_layers + 512 * n_arrays
