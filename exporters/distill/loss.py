"""The student and its distillation loss as one module, the heads applied a chunk of tokens at a time.

A student's full logits for a batch are ``tokens x vocabulary`` floats, and the loss needs them in
float32 with their log-softmax and its gradient: for 8 x 512 tokens and a 128,256-token vocabulary
that is several GB, most of a step's memory traffic, and what made the old loop's peak memory
1.6x a careful loop's.  Here the student's final hidden states (after its norm, as
``hidden_states[-1]`` is) go through the head ``chunk`` tokens at a time, and each chunk's loss
*and its gradient* are computed at once, in the forward pass (``_FusedKL``; the method of Liger
Kernel's fused linear cross-entropy, written with torch's own operations): for KL(t ‖ s) the
gradient with respect to the student's logits is ``(softmax(s) - softmax(t)) / T``, so each
chunk's logits live only while its share of the loss, of the hidden states' gradient and of the
head's gradient are computed, and nothing is recomputed in the backward pass (the
``torch.utils.checkpoint`` version this replaces ran the head's product once more).  The teacher's
logits are made the same way from its final hidden states and its own head, one chunk at a time,
so the teacher's full logits (1 GB for that batch) are never held either.  Where the teacher is
sharded over several processes (its head is gathered only inside its own forward) its logits
come in whole instead.  The value and the gradients are those of the full-logits loss
(KL(teacher ‖ student) at temperature T, × T², averaged over the tokens), up to float rounding;
under autocast the products are bfloat16 exactly as autocast makes them.

The module is the root that FSDP2 shards (``ranks.shard``): the head and the embedding are used
inside its forward, where FSDP has gathered them.
"""

from __future__ import annotations

import functools

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

CHUNK = 1024            # tokens per head chunk: 1024 x 128,256 float32 logits is 0.5 GB


def head_of(model) -> tuple[torch.nn.Module, float | None]:
    """(output head, final logit soft-capping or None) of a causal LM whose forward is
    ``lm_head(base_model(...).last_hidden_state)`` [with Gemma's soft-capping]."""
    cap = getattr(model.config, "final_logit_softcapping", None)
    return model.get_output_embeddings(), (float(cap) if cap else None)


@dataclass
class Teacher:
    """What the loss needs of the teacher's forward: its final hidden states (after its norm) and
    either its logits whole (``logits``) or its head to make them a chunk at a time."""
    hidden: torch.Tensor | None                 # None: a sharded teacher's, when no loss needs it
    logits: torch.Tensor | None = None
    head: torch.nn.Module | None = None
    cap: float | None = None
    _cast: tuple | None = field(default=None, init=False, repr=False)   # (dtype, head weight, bias) in it

    def rows(self, i: int, j: int, dtype) -> torch.Tensor:
        """Logits of tokens i..j (flattened over the batch), the products in ``dtype``."""
        if self.logits is not None:
            return self.logits.reshape(-1, self.logits.shape[-1])[i:j]
        if self._cast is None or self._cast[0] != dtype:       # the head cast once per batch, not per chunk
            b = self.head.bias
            self._cast = (dtype, self.head.weight.to(dtype), None if b is None else b.to(dtype))
        _, w, b = self._cast
        h = self.hidden.reshape(-1, self.hidden.shape[-1])[i:j]
        out = F.linear(h.to(dtype), w, b)
        return out if self.cap is None else torch.tanh(out / self.cap) * self.cap


@torch.no_grad()
def run_teacher(teacher, x, whole: bool = False, hidden: bool = True) -> Teacher:
    """The teacher's forward on token batch ``x``; ``whole``: its logits as its own forward makes
    them (a teacher sharded over processes), else only its final hidden states.  ``hidden``
    (``whole`` only): keep its final hidden states too (the hidden-state loss needs them; asking
    for them holds every layer's for the step)."""
    if whole:
        out = teacher(input_ids=x, output_hidden_states=hidden, use_cache=False)
        return Teacher(out.hidden_states[-1] if hidden else None, logits=out.logits)
    head, cap = head_of(teacher)
    return Teacher(teacher.base_model(input_ids=x, use_cache=False).last_hidden_state, head=head, cap=cap)


def _chunk_kl(h, weight, bias, t_logits, inv_t: float, cap: float | None):
    """(summed KL(teacher ‖ student) of one chunk of tokens, its gradient with respect to the
    student's logits before any soft-capping), both in float32."""
    z = F.linear(h, weight, bias).float()
    if cap is not None:
        squash = torch.tanh(z / cap)
        z = squash * cap
    s = F.log_softmax(z * inv_t, -1)
    t = F.log_softmax(t_logits.float() * inv_t, -1)
    p = t.exp()
    grad = (s.exp() - p) * inv_t                            # d/dz of sum p (t - s); each row of p sums to 1
    if cap is not None:
        grad = grad * (1 - squash * squash)
    return (p * (t - s)).sum(), grad


def accumulate(out: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:
    """``out += a @ b`` for a float32 ``out`` and ``a``, ``b`` in the products' type: inside the
    product where torch has it (CUDA's ``addmm`` with a float32 ``out_dtype``: the sum is made in
    the product's float32 accumulator), else a product and an add.  The head's weight gradient is
    accumulated over the chunks this way: the separate adds were 4.5 ms of a 182 ms step at a
    128,256-word head (RESULTS.md), and each chunk's product was rounded to bfloat16 before them."""
    if out.dtype != a.dtype and _fp32_addmm(str(out.device)):
        torch.addmm(out, a, b, out_dtype=out.dtype, out=out)
    else:
        out += a @ b


@functools.lru_cache(maxsize=None)
def _fp32_addmm(device: str) -> bool:
    """Whether ``torch.addmm(out, a, b, out_dtype=float32, out=out)`` with bfloat16 ``a``, ``b``
    runs on ``device`` and sums as a float32 product would (checked once on a small case: the
    operator is recent, and CPUs do not have it)."""
    gen = torch.Generator().manual_seed(0)
    a, b, c = (torch.randn(*shape, generator=gen).to(device) for shape in ((64, 96), (96, 32), (64, 32)))
    want = c + a.bfloat16().float() @ b.bfloat16().float()
    try:
        torch.addmm(c, a.bfloat16(), b.bfloat16(), out_dtype=torch.float32, out=c)
    except (RuntimeError, TypeError, NotImplementedError):
        return False
    return bool(torch.allclose(c, want, rtol=1e-4, atol=1e-4))


class _FusedKL(torch.autograd.Function):
    """The summed chunked KL of hidden states ``h`` through ``weight``/``bias``, its gradients
    made in the forward pass and handed over in the backward (see the module's docstring)."""

    @staticmethod
    def forward(ctx, h, weight, bias, teacher: Teacher, kl, chunk: int, inv_t: float, cap, mm):
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        with torch.autocast(h.device.type, enabled=False):
            w = weight.to(mm)
            b = None if bias is None else bias.to(mm)
            grad_h = torch.empty_like(h) if need_h else None
            grad_w = torch.zeros_like(weight, dtype=torch.float32) if need_w else None
            grad_b = torch.zeros_like(bias, dtype=torch.float32) if need_b else None
            total = h.new_zeros((), dtype=torch.float32)
            for i in range(0, h.shape[0], chunk):
                hc = h[i:i + chunk].to(mm)
                loss, g = kl(hc, w, b, teacher.rows(i, i + chunk, mm), inv_t, cap)
                total = total + loss
                if grad_b is not None:
                    grad_b += g.sum(0)
                g = g.to(mm)
                if grad_h is not None:
                    grad_h[i:i + chunk] = g @ w
                if grad_w is not None:
                    accumulate(grad_w, g.t(), hc)
        ctx.grads = (grad_h, None if grad_w is None else grad_w.to(weight.dtype),
                     None if grad_b is None else grad_b.to(bias.dtype))
        return total

    @staticmethod
    def backward(ctx, go):
        grads = tuple(None if g is None else g.mul_(go) for g in ctx.grads)
        del ctx.grads
        return (*grads, None, None, None, None, None, None)


class Distilled(torch.nn.Module):
    """``forward(x, teacher)`` -> the loss; ``student`` is trained in place."""

    def __init__(self, student, temperature: float = 1.0, chunk: int = CHUNK, compiled: bool = False):
        super().__init__()
        self.student = student
        self.temperature = float(temperature)
        self.chunk = int(chunk)
        if compiled:
            from edgellm.exporters.distill import teacher

            self.kl = torch.compile(_chunk_kl, dynamic=False, backend=teacher.BACKEND)
        else:
            self.kl = _chunk_kl

    def forward(self, x, teacher: Teacher | None = None, keep=None, hidden_weight: float = 0.0):
        if teacher is None:                             # no teacher: next-token loss (the baseline)
            return self.student(input_ids=x, labels=x, use_cache=False).loss
        h = self.student.base_model(input_ids=x, use_cache=False).last_hidden_state
        head, cap = head_of(self.student)
        flat = h.reshape(-1, h.shape[-1])
        kind = flat.device.type
        mm = torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else flat.dtype
        total = _FusedKL.apply(flat, head.weight, head.bias, teacher, self.kl, self.chunk,
                               1.0 / self.temperature, cap, mm)
        loss = total * (self.temperature ** 2) / flat.shape[0]
        if hidden_weight > 0:
            loss = loss + hidden_weight * F.mse_loss(h.float(), teacher.hidden.float().index_select(-1, keep))
        return loss
