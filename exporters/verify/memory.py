"""What verifying an export needs, predicted before any work (issue 26: memory that does not grow
with the vocabulary).

At its peak verification holds: the process (Python, torch, transformers), the original model in
float32, one window's activations through it, the candidate runtime (its weights, mapped, and its
output and compute buffers of logits), the candidate's logits as edgellm reads them, and a few
slices of log-probabilities (``metrics.SLICE_BYTES``; the reference's logits come a slice of
positions at a time, ``verify.hf_logit_slices``; llama.cpp's a batch of ``SCORING_BATCH``
positions at a time, ``LlamaCppModel.logit_slices``; ONNX Runtime's a window at a time).  Logits
are positions x vocabulary x 4 bytes: with a 262,144-token vocabulary and 512 positions, 512 MB
each; they used to be kept for every window of the reference and the candidate at once, and a
270 M model's verification reached 23 GB.
"""

from __future__ import annotations

from edgellm.errors import EdgeLLMError
from edgellm.exporters.calibrate.memory import MARGIN, PROCESS   # the same process, the same allocator slack

RUNTIME = 150 << 20          # a runtime's own allocations besides weights and logits


def verification_need(model, artifact_bytes: int, context: int = 512, scoring_rows: int | None = None) -> int:
    """Host bytes at verification's peak for ``model`` and a candidate file of ``artifact_bytes``
    whose runtime holds ``scoring_rows`` positions of logits at a time (None: the whole window)."""
    from edgellm.metrics import SLICE_BYTES

    h, f = model.hidden, model.ffn
    reference = 4 * model.n_params
    activations = 4 * context * (4 * h + 2 * f) + 4 * model.n_heads * context * context
    logits = 4 * min(context, scoring_rows or context) * model.vocab
    # the runtime's output buffer, its compute buffer's logits, and our copy
    candidate = artifact_bytes + RUNTIME + 3 * logits
    return int(MARGIN * (reference + activations + candidate + 3 * SLICE_BYTES)) + PROCESS


def preflight(model, artifact_bytes: int, label: str, context: int = 512, scoring_rows: int | None = None) -> int:
    """``verification_need``, refused before any work when this machine has not got it."""
    from edgellm.runtime.hostinfo import probe
    from edgellm.units import fmt_bytes

    need = verification_need(model, artifact_bytes, context, scoring_rows)
    have = probe().ram_bytes
    if need > 0.9 * have:
        raise EdgeLLMError(f"verifying {label} needs about {fmt_bytes(need)} of RAM (the original model in float32 "
                           f"beside the export); this machine has {fmt_bytes(have)} (verify on a bigger host, or "
                           "--no-verify and `edgellm eval` there)")
    return need
