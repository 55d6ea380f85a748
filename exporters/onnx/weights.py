"""ONNX initializers streamed to an external data file as they are made, and the weight encodings.

The graph protobuf holds only names, shapes and offsets; each weight's bytes go straight to
``model.onnx.data`` the moment it is converted, so peak memory is about one tensor, whatever the
model's size (and the 2 GB protobuf limit never applies).  Offsets are aligned to 4 KiB so ONNX
Runtime can map them.

Weight encodings (ONNX MatMul layout: B is [K, N], K the input features):
- fp32 / fp16: the matrix, transposed from Hugging Face's [N, K];
- int4: ONNX Runtime's MatMulNBits blocks, made by ONNX Runtime's own C++ quantizer
  (``quantize_matmul_4bits``, the kernel MatMulNBitsQuantizer calls), asymmetric with a zero point
  per block, as MatMulNBitsQuantizer does by default; embeddings (int4 and int8) in the same block
  layout for GatherBlockQuantized;
- int8 matrices: MatMulNBits blocks of 8 bits (``quantize_nbits``), as int4's are of 4;
- a mixture's stacked experts for ONNX Runtime's ``QMoE`` (``quantize_experts``): symmetric, the
  zero point fixed at the middle of the range, 8 bits with a scale per row, 4 bits with a scale per
  block of the row (two weights a byte, the first in the low nibble).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

ALIGN = 4096


@dataclass(frozen=True)
class NBits:
    """A matrix in MatMulNBits layout: packed [N, blocks, blob], scales [N, blocks], zero points
    [N, ceil(blocks * bits / 8)]."""
    packed: np.ndarray
    scales: np.ndarray
    zero_points: np.ndarray
    k: int
    n: int
    bits: int
    block: int


def quantize_experts(w: np.ndarray, bits: int, block: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Stacked expert weights [experts, N, K] (out, in) -> (uint8 weights [experts, N, K * bits / 8],
    float32 scales [experts, N] per row, or [experts, N, K / block]), round to nearest, as
    ONNX Runtime's ``QMoE`` reads them (checked against a numpy reference: benchmarks/RESULTS.md)."""
    e, n, k = w.shape
    qmax, zero = (7, 8) if bits == 4 else (127, 128)
    out = np.empty((e, n, k * bits // 8), np.uint8)
    scales = np.empty((e, n, k // block if block else 1), np.float32)
    for x in range(e):                       # an expert at a time: the temporaries stay one expert's
        groups = w[x].reshape(n, -1, block or k)
        scale = np.abs(groups).max(-1) / qmax
        scale[scale == 0] = 1.0
        q = (np.clip(np.rint(groups / scale[..., None]), -qmax - 1, qmax) + zero).astype(np.uint8).reshape(n, k)
        out[x] = q[:, 0::2] | (q[:, 1::2] << 4) if bits == 4 else q
        scales[x] = scale
    return out, (scales if block else scales[..., 0])


def quantize_nbits(w_nk: np.ndarray, bits: int, block: int) -> NBits:
    """Hugging Face weight [N, K] (out, in) -> MatMulNBits blocks along K, round to nearest."""
    from onnxruntime.capi import _pybind_state as ort_c

    n, k = w_nk.shape
    blocks = -(-k // block)
    kpack = 8 // bits
    w_kn = np.ascontiguousarray(w_nk.T, dtype=np.float32)
    if blocks * block != k:
        w_kn = np.pad(w_kn, ((0, blocks * block - k), (0, 0)))
    packed = np.zeros((n, blocks, block // kpack), dtype=np.uint8)
    zeros = np.zeros((n, -(-blocks // kpack)), dtype=np.uint8)
    scales = np.zeros((n, blocks), dtype=np.float32)
    quantize = {4: ort_c.quantize_matmul_4bits, 8: ort_c.quantize_matmul_8bits}[bits]
    quantize(packed, w_kn, scales, zeros, block, n, k, False)
    return NBits(packed, scales, zeros, k, n, bits, block)


def dequantize_nbits(q: NBits) -> np.ndarray:
    """Back to float [N, K] (for tests and for reasoning about error)."""
    if q.bits == 4:
        lo, hi = q.packed & 0x0F, q.packed >> 4
        vals = np.stack([lo, hi], axis=-1).reshape(q.n, q.packed.shape[1], -1)
        z = np.stack([q.zero_points & 0x0F, q.zero_points >> 4], axis=-1).reshape(q.n, -1)[:, :q.packed.shape[1]]
    else:
        vals, z = q.packed, q.zero_points[:, :q.packed.shape[1]]
    w = (vals.astype(np.float32) - z[..., None]) * q.scales[..., None]
    return w.reshape(q.n, -1)[:, :q.k]


class ExternalData:
    """Writes initializer bytes to one file and makes TensorProtos that point into it."""

    def __init__(self, path: Path):
        self.path = path
        self._f = open(path, "wb")
        self.offset = 0
        self.initializers: list = []

    def add(self, name: str, array: np.ndarray) -> str:
        import onnx
        from onnx import helper

        array = np.ascontiguousarray(array)
        t = onnx.TensorProto()
        t.name = name
        t.data_type = helper.np_dtype_to_tensor_dtype(array.dtype)
        t.dims.extend(array.shape)
        if array.nbytes < 1024:                      # small constants stay inline
            t.raw_data = array.tobytes()
        else:
            pad = -self.offset % ALIGN
            if pad:
                self._f.write(b"\0" * pad)
                self.offset += pad
            self._f.write(memoryview(array).cast("B"))
            t.data_location = onnx.TensorProto.EXTERNAL
            for key, value in (("location", self.path.name), ("offset", str(self.offset)),
                               ("length", str(array.nbytes))):
                entry = t.external_data.add()
                entry.key, entry.value = key, value
            self.offset += array.nbytes
        self.initializers.append(t)
        return name

    def close(self) -> None:
        self._f.flush()
        self._f.close()
