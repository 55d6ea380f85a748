"""Error-compensating rounding (GPTQ) into ggml's block types, a block of columns at a time.

ggml's quantizers choose a K-quant super-block's scales from all 256 of its values at once, so
the columns of a block cannot be rounded one by one as GPTQ does.  Instead each block of columns
(256, or fewer for the 32-wide types) is quantized by ggml, importance-weighted by H's diagonal,
and its rounding error E is carried onto the columns not yet quantized with GPTQ's block update

    W[:, rest] -= E · U[b, b]⁻¹ · U[b, rest]        (U: upper Cholesky factor of H⁻¹)

which is the closed form of GPTQ's column-by-column updates for a whole block: the layer's output
error is what is minimised.  U[b, b]⁻¹ · U[b, rest] = −R[b, rest] · R[rest, rest]⁻¹ where
H = R Rᵀ with R upper triangular (R = U⁻¹: the Cholesky factor of H with rows and columns
reversed), so one Cholesky factorization and a triangular solve per block serve: half the work of
inverting H and factoring the inverse, and one n × n matrix in memory instead of three (a
14,336-wide down-projection input is 822 MB in float32).  Float32, as GPTQ's reference code;
float64 where float32 finds H not positive definite.
The factor and the block updates run on the calibration's device (a GPU when the statistics were
made on one: the products are the n · cols² part of the writer); ggml's quantizers run on the CPU
and see one block of columns at a time.
Rows are independent, so the rows of a tensor may come in chunks.
The bytes are ggml's own for every block: a row's bytes are its blocks' bytes in order.
"""

from __future__ import annotations

import numpy as np

from edgellm.core.ggml import TYPES

DAMP = 0.01
GPU_WORKERS = 4       # row chunks rounded at once when the factors live on a GPU (Compensators.workers)
# rounded as they are: at 8 bits and more the rounding error is (1/127)² of 4 bits' in size, and
# compensating it is a Cholesky factor and its solves for nothing measurable (benchmarks/RESULTS.md)
UNCOMPENSATED = ("F32", "F16", "BF16", "Q8_0")


def workers_for(device) -> int:
    return GPU_WORKERS if str(device).startswith("cuda") else 1


def block_width(cols: int, ggml_type: str) -> int | None:
    """Columns quantized together: the widest of 256/128/64/32 that divides the row and is whole
    blocks of the type; None when none does."""
    blk = TYPES[ggml_type].block
    return next((b for b in (256, 128, 64, 32) if cols % b == 0 and b % blk == 0), None)


class Compensator:
    """GPTQ's factors for one Hessian (shared by every tensor reading the same input)."""

    def __init__(self, hessian: np.ndarray, device: str = "cpu", phases=None):
        import torch

        from edgellm.exporters.calibrate.common import Phases

        self.phases = phases or Phases()

        H = np.asarray(hessian, dtype=np.float32)
        diag = np.diag(H).copy()
        diag[diag == 0] = 1                                  # a dead input column (its row is zero too)
        self.diag = diag
        flipped = np.ascontiguousarray(H[::-1, ::-1])        # the one copy of H made here
        flipped[np.diag_indices_from(flipped)] = (diag + DAMP * float(np.mean(diag, dtype=np.float64)))[::-1]
        flipped = torch.from_numpy(flipped).to(device)
        L, info = torch.linalg.cholesky_ex(flipped)
        if int(info):                                       # float32 too coarse for this H: float64
            L = torch.linalg.cholesky(flipped.double()).float()
        del flipped
        self.R = L.flip(0, 1)                               # upper triangular, H = R Rᵀ
        self.device = self.R.device
        del L
        self._inv: dict[tuple[int, int], object] = {}

    def carry(self, a: int, b: int):
        """U[a:b, a:b]⁻¹ · U[a:b, b:] = −R[a:b, b:] · R[b:, b:]⁻¹ (cached per block)."""
        import torch

        if (a, b) not in self._inv:
            self._inv[(a, b)] = -torch.linalg.solve_triangular(self.R[b:, b:], self.R[a:b, b:], upper=True,
                                                               left=False)
        return self._inv[(a, b)]


def quantize_rows(rows: np.ndarray, ggml_type: str, out: np.ndarray, comp: Compensator, threads: int = 1) -> None:
    """float32 ``rows`` [n, cols] -> ggml ``ggml_type`` bytes in ``out`` [n * row_bytes]."""
    import torch

    from edgellm.exporters.gguf.ggml_quant import dequantize, quantize_into, row_bytes

    n, cols = rows.shape
    width = block_width(cols, ggml_type)
    ph = comp.phases
    with ph("GPTQ"):
        w = torch.from_numpy(np.array(rows, dtype=np.float32)).to(comp.device)
        rb = row_bytes(ggml_type, width)
        dst = out.reshape(n, -1)
        buf = np.empty(n * rb, np.uint8)
        for a in range(0, cols, width):
            b = a + width
            block = np.ascontiguousarray(w[:, a:b].cpu().numpy())
            with ph("ggml quantize"):
                quantize_into(ggml_type, block, buf, threads=threads, imatrix=np.ascontiguousarray(comp.diag[a:b]))
            dst[:, a // width * rb:(a // width + 1) * rb] = buf.reshape(n, rb)
            if b < cols:
                with ph("ggml quantize"):
                    q = dequantize(ggml_type, buf, width, threads)
                w[:, b:] -= (w[:, a:b] - torch.from_numpy(q).to(comp.device)) @ comp.carry(a, b)


class Compensators:
    """A Compensator per GGUF tensor name, made when first asked for and kept for the few tensors
    that share its input (tensors are written layer by layer), so memory holds a handful of
    factors, not one per layer.  The token embedding is never compensated: its rows are looked
    up, not multiplied."""

    def __init__(self, hessians, keep: int = 2, device: str = "cpu", phases=None):
        from edgellm.exporters.calibrate.common import Phases

        self.phases = phases or Phases()    # where the writer's time goes (XᵀX, GPTQ, ggml's quantizers)
        # row chunks the writer rounds at once: on a GPU several, so ggml's rounding on the CPU's
        # cores overlaps the error updates on the GPU (one at a time, each waited for the other);
        # on a CPU one (both already use every core)
        self.workers = workers_for(device)
        self.hessians = hessians            # a mapping; read only when a tensor asks (it may be lazy)
        self.keep = keep
        self.device = device
        self._made: dict[int, tuple[np.ndarray, Compensator]] = {}   # the array kept: its id stays its own
        self._group = None

    def get(self, name: str, ggml_type: str, cols: int) -> Compensator | None:
        if name == "token_embd.weight" or ggml_type in UNCOMPENSATED or block_width(cols, ggml_type) is None:
            return None
        group = getattr(self.hessians, "group", None)
        if group is not None and (g := group(name)) is not None and g != self._group:
            self._made.clear()                  # the last layer's factors go before the next layer's XᵀX come
            self._group = g
        h = self.hessians.get(name)
        if h is None:
            return None
        if id(h) not in self._made:
            while len(self._made) >= self.keep:
                self._made.pop(next(iter(self._made)))
            with self.phases("GPTQ"):
                self._made[id(h)] = (h, Compensator(h, self.device, self.phases))
        return self._made[id(h)][1]
