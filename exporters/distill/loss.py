"""The student and its distillation loss as one module, the head applied a chunk of tokens at a time.

A student's full logits for a batch are ``tokens x vocabulary`` floats, and the loss needs them in
float32 with their log-softmax and its gradient: for 8 x 512 tokens and a 128,256-token vocabulary
that is several GB, most of a step's memory traffic, and what made the old loop's peak memory
1.6x a careful loop's.  Here the student's final hidden states (after its norm, as
``hidden_states[-1]`` is) go through the head ``chunk`` tokens at a time, inside
``torch.utils.checkpoint``: each chunk's logits live only while its share of the loss and, in the
backward pass, its gradient are computed.  The value is the same function as before
(KL(teacher ‖ student) at temperature T, × T², averaged over the tokens), up to float rounding.

The module is the root that FSDP2 shards (``ranks.shard``): the head and the embedding are used
inside its forward, where FSDP has gathered them.  The teacher's logits come in whole (the
teacher's own forward, in its own precision): they carry no gradient, so they cost one tensor of
the teacher's dtype, not a float32 graph.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

CHUNK = 1024            # tokens per head chunk: 1024 x 128,256 float32 logits is 0.5 GB


def head_of(model) -> tuple[torch.nn.Module, float | None]:
    """(output head, final logit soft-capping or None) of a causal LM whose forward is
    ``lm_head(base_model(...).last_hidden_state)`` [with Gemma's soft-capping]."""
    cap = getattr(model.config, "final_logit_softcapping", None)
    return model.get_output_embeddings(), (float(cap) if cap else None)


def _chunk_kl(h, weight, bias, t_logits, inv_t: float, cap: float | None):
    """Summed KL(teacher ‖ student) of one chunk of tokens, in float32."""
    logits = F.linear(h, weight, bias).float()            # (under autocast: a bfloat16 product)
    if cap is not None:
        logits = torch.tanh(logits / cap) * cap
    s = F.log_softmax(logits * inv_t, -1)
    t = F.log_softmax(t_logits.float() * inv_t, -1)
    return (t.exp() * (t - s)).sum()


class Distilled(torch.nn.Module):
    """``forward(x, teacher_logits)`` -> the loss; ``student`` is trained in place."""

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

    def forward(self, x, teacher_logits=None, teacher_hidden=None, keep=None, hidden_weight: float = 0.0):
        if teacher_logits is None:                      # no teacher: next-token loss (the baseline)
            return self.student(input_ids=x, labels=x, use_cache=False).loss
        h = self.student.base_model(input_ids=x, use_cache=False).last_hidden_state
        head, cap = head_of(self.student)
        flat = h.reshape(-1, h.shape[-1])
        tl = teacher_logits.reshape(flat.shape[0], -1)
        total = flat.new_zeros((), dtype=torch.float32)
        for i in range(0, flat.shape[0], self.chunk):
            total = total + torch.utils.checkpoint.checkpoint(
                self.kl, flat[i:i + self.chunk], head.weight, head.bias, tl[i:i + self.chunk],
                1.0 / self.temperature, cap, use_reentrant=False)
        loss = total * (self.temperature ** 2) / flat.shape[0]
        if hidden_weight > 0:
            loss = loss + hidden_weight * F.mse_loss(h.float(), teacher_hidden.float().index_select(-1, keep))
        return loss
