"""The teacher's forward in FP8 on GPUs that multiply FP8 (Hopper, Ada: compute capability >= 8.9).

The teacher is about two thirds of a distillation step's arithmetic and is never trained, so its
matrix products can run on the FP8 tensor cores at twice the bfloat16 rate.  Each linear layer of
its decoder keeps its weight as float8 (e4m3) with one scale per output row, fixed once; the
activations are scaled per token at run time; ``torch._scaled_mm`` (torch's own FP8 product,
cuBLAS/CUTLASS underneath) multiplies them with those scales and returns bfloat16.  The head and
the embedding stay bfloat16: the logits are what the student learns from.

Not taken on trust: ``convert`` keeps the bfloat16 weights until ``measured_kld`` has compared
the teacher's next-token distributions in both precisions on real training windows; past
``MAX_KLD`` the conversion is undone and the run stays bfloat16 (the card records which and the
measured figure).  torchao's float8 would do the same products; it is not in this project's
dependencies, and the part used here is torch's.
"""

from __future__ import annotations

import torch

E4M3_MAX = 448.0
# nats per token.  A student that learned the FP8 teacher exactly would be off the real teacher by
# about that much cross-entropy on text the teacher predicts well: exp(0.01) - 1, about 1% of its
# perplexity, at most; a student's own divergence from its teacher is 0.2-2 nats.  Measured: 0.0003
# (`small`), 0.009 (`bench`: the student's perplexity unchanged, RESULTS.md), 0.024 on the real
# SmolLM2-135M (this CPU emulating the products; refused: kept bf16), 0.28 on a random-weight 8B
# shape (refused).
MAX_KLD = 0.01


def available(device: str) -> bool:
    """FP8 products on ``device``: a CUDA GPU of compute capability 8.9 or newer."""
    if not device.startswith("cuda") or not hasattr(torch, "_scaled_mm"):
        return False
    return torch.cuda.get_device_capability(torch.device(device)) >= (8, 9)


def _rowwise(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(float8 e4m3 rows, float32 scale per row as a column) with ``x ~= q * scale``."""
    scale = x.abs().amax(dim=-1, keepdim=True).float().clamp(min=1e-12) / E4M3_MAX
    return (x.float() / scale).clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn), scale


class Fp8Linear(torch.nn.Module):
    """A frozen ``nn.Linear`` whose product runs in FP8 (see the module's text); ``use_fp8=False``
    gives the original layer's product while it is still held (before ``commit``)."""

    def __init__(self, lin: torch.nn.Linear):
        super().__init__()
        w8, scale = _rowwise(lin.weight.detach())
        self.register_buffer("w8", w8, persistent=False)                       # (out, in)
        self.register_buffer("w_scale", scale.t().contiguous(), persistent=False)   # (1, out)
        self.bias = lin.bias
        self.original: torch.nn.Linear | None = lin
        self.use_fp8 = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.use_fp8:
            return self.original(x)
        flat = x.reshape(-1, x.shape[-1])
        x8, x_scale = _rowwise(flat)
        if flat.is_cuda:
            y = torch._scaled_mm(x8, self.w8.t(), scale_a=x_scale, scale_b=self.w_scale, out_dtype=torch.bfloat16)
        else:                                    # the same arithmetic where no FP8 unit exists (tests)
            y = ((x8.float() * x_scale) @ (self.w8.float() * self.w_scale.t()).t()).to(torch.bfloat16)
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*x.shape[:-1], y.shape[-1]).to(x.dtype)


def _children(teacher, wanted):
    """(parent, name, child) of every module inside the teacher's decoder layers that ``wanted`` takes."""
    for layer in teacher.base_model.layers:
        for parent in layer.modules():
            for name, child in parent.named_children():
                if wanted(child):
                    yield parent, name, child


def _fp8_able(m) -> bool:
    """A plain linear layer of the sizes the FP8 product takes (multiples of 16)."""
    return type(m) is torch.nn.Linear and m.in_features % 16 == 0 and m.out_features % 16 == 0


def _swapped(teacher):
    return _children(teacher, lambda m: isinstance(m, Fp8Linear))


def convert(teacher) -> list[Fp8Linear]:
    """Swap the decoder's linear layers for ``Fp8Linear`` in place (the originals kept until
    ``commit`` or ``undo``)."""
    done = []
    for parent, name, lin in list(_children(teacher, _fp8_able)):
        f = Fp8Linear(lin)
        setattr(parent, name, f)
        done.append(f)
    return done


def undo(teacher) -> None:
    for parent, name, f in list(_swapped(teacher)):
        setattr(parent, name, f.original)


def commit(teacher) -> None:
    """Drop the bfloat16 originals: from here the teacher is FP8 for good."""
    for _, _, f in _swapped(teacher):
        f.original = None
        f.use_fp8 = True


@torch.no_grad()
def measured_kld(teacher, batches) -> float:
    """Mean KL(bfloat16 teacher ‖ FP8 teacher) per token over ``batches`` of token ids (after
    ``convert``, before ``commit``)."""
    import torch.nn.functional as F

    layers = [f for _, _, f in _swapped(teacher)]
    total, n = 0.0, 0
    for x in batches:
        for f in layers:
            f.use_fp8 = False
        ref = F.log_softmax(teacher(input_ids=x, use_cache=False).logits.float(), -1)
        for f in layers:
            f.use_fp8 = True
        got = F.log_softmax(teacher(input_ids=x, use_cache=False).logits.float(), -1)
        total += float((ref.exp() * (ref - got)).sum())
        n += ref.shape[0] * ref.shape[1]
        del ref, got
    return total / max(1, n)
