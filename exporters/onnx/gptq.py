"""Calibrated ONNX int4: error-compensating rounding (GPTQ) into MatMulNBits blocks.

ONNX Runtime's own block quantizer rounds every weight to its nearest level (RTN).  GPTQ (Frantar
et al., 2022) quantizes one input column at a time and moves the rounding error onto the columns
not yet quantized, weighted by the inverse of H = XᵀX (the calibration activations' second
moments), so the layer's *output* error is what is minimised, not the weights'.  Each block of
``block`` columns gets its scale and zero point when GPTQ reaches it, from the error-updated
weights, with the clipping range searched for the smallest H-weighted error (our own scales).
The result is written in exactly the layout ONNX Runtime's quantizer writes (asymmetric 4-bit,
zero point per block), so the graph and the kernels are unchanged: only the values differ.

ONNX Runtime ships a GPTQ path too (``MatMulNBitsQuantizer`` with ``GPTQWeightOnlyQuantConfig``), but
it runs a whole float model through onnxruntime to collect inputs and rewrites a finished graph;
edgellm builds its graph tensor by tensor from the checkpoint, so it quantizes here, with the
Hessians the calibration pass already gathered.
"""

from __future__ import annotations

import numpy as np

from edgellm.exporters.onnx.weights import NBits

DAMP = 0.01
LAZY = 128
CLIP = (1.0, 0.95, 0.9, 0.85, 0.8, 0.75)


def _params(w, hdiag, maxq: int):
    """Scale and zero point per row for a block ``w`` [N, block], clip range searched per row for
    the smallest diag(H)-weighted rounding error."""
    import torch

    lo = torch.clamp(w.min(1).values, max=0)
    hi = torch.clamp(w.max(1).values, min=0)
    best_err = best_s = best_z = None
    for c in CLIP:
        s = torch.clamp((hi - lo) * c / maxq, min=1e-10)
        z = torch.clamp(torch.round(-lo * c / s), 0, maxq)
        q = torch.clamp(torch.round(w / s[:, None]) + z[:, None], 0, maxq)
        err = (((q - z[:, None]) * s[:, None] - w) ** 2 * hdiag[None, :]).sum(1)
        if best_err is None:
            best_err, best_s, best_z = err, s, z
        else:
            better = err < best_err
            best_err = torch.where(better, err, best_err)
            best_s = torch.where(better, s, best_s)
            best_z = torch.where(better, z, best_z)
    return best_s, best_z


def gptq_nbits(w_nk: np.ndarray, hessian: np.ndarray, bits: int = 4, block: int = 32) -> NBits:
    """Hugging Face weight [N, K] and H [K, K] -> MatMulNBits blocks along K."""
    import torch

    n, k = w_nk.shape
    blocks = -(-k // block)
    kp = blocks * block
    maxq = (1 << bits) - 1
    W = torch.zeros((n, kp), dtype=torch.float32)
    W[:, :k] = torch.from_numpy(np.asarray(w_nk, dtype=np.float32))
    H = torch.eye(kp, dtype=torch.float64)
    H[:k, :k] = torch.from_numpy(np.asarray(hessian, dtype=np.float64))
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    H += torch.eye(kp, dtype=torch.float64) * DAMP * torch.mean(torch.diag(H))
    hdiag = torch.diag(H).float()
    Hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True).float()
    Q = torch.zeros((n, kp), dtype=torch.uint8)
    S = torch.zeros((n, blocks), dtype=torch.float32)
    Z = torch.zeros((n, blocks), dtype=torch.uint8)
    for i1 in range(0, kp, LAZY):
        i2 = min(i1 + LAZY, kp)
        W1 = W[:, i1:i2].clone()
        E1 = torch.zeros_like(W1)
        Hi = Hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            col = i1 + i
            if col % block == 0:
                b = col // block
                s, z = _params(torch.cat([W1[:, i:], W[:, i2:]], 1)[:, :block], hdiag[col:col + block], maxq)
                S[:, b], Z[:, b] = s, z.to(torch.uint8)
            s, z = S[:, col // block], Z[:, col // block].float()
            w = W1[:, i]
            q = torch.clamp(torch.round(w / s) + z, 0, maxq)
            Q[:, col] = q.to(torch.uint8)
            err = (w - (q - z) * s) / Hi[i, i]
            W1[:, i:] -= err[:, None] * Hi[i, i:][None, :]
            E1[:, i] = err
        W[:, i2:] -= E1 @ Hinv[i1:i2, i2:]
    return _pack(Q.numpy(), S.numpy(), Z.numpy(), k, n, bits, block)


def _pack(q: np.ndarray, scales: np.ndarray, zeros: np.ndarray, k: int, n: int, bits: int, block: int) -> NBits:
    """Levels [N, Kpadded], scales and zero points [N, blocks] -> ONNX Runtime's packed layout
    (two 4-bit values a byte, the even one in the low nibble)."""
    blocks = scales.shape[1]
    if bits == 8:
        zp = zeros.astype(np.uint8)
        return NBits(q.reshape(n, blocks, block), scales.astype(np.float32), zp, k, n, bits, block)
    pairs = q.reshape(n, blocks, block // 2, 2)
    packed = (pairs[..., 0] | (pairs[..., 1] << 4)).astype(np.uint8)
    if blocks % 2:
        zeros = np.concatenate([zeros, np.zeros((n, 1), np.uint8)], 1)
    zp = (zeros[:, 0::2] | (zeros[:, 1::2] << 4)).astype(np.uint8)
    return NBits(packed, scales.astype(np.float32), zp, k, n, bits, block)


def _sources(arch, name: str) -> list[str]:
    """The checkpoint weights whose input a graph matmul shares (their calibration Hessian)."""
    if name in ("lm_head", "embed"):
        tied = arch.model.tied_embeddings
        return [arch.embed] if tied else ([arch.head] if name == "lm_head" else [])
    _, i, _, part = name.split(".")
    return arch.calibration_sources(int(i), part)


def calibrated_quantizer(arch, hessian: dict[str, np.ndarray], block: int):
    """The int4 quantizer for ``onnx_graph.build``: GPTQ where the calibration has the matmul's
    input statistics, ONNX Runtime's rounding where it has none (an untied embedding's lookup)."""
    from edgellm.exporters.onnx.weights import quantize_nbits

    def quantize(w_nk: np.ndarray, name: str) -> NBits:
        h = next((hessian[s] for s in _sources(arch, name) if s in hessian), None)
        return quantize_nbits(w_nk, 4, block) if h is None else gptq_nbits(w_nk, h, 4, block)
    return quantize
