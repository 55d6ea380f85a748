"""The teacher on its device, in the precision the run asked for, and compiled layers.

``--teacher-precision``:
- ``fp32``: the teacher as loaded (the default on a CPU, where bfloat16 is slower without AMX);
- ``bf16``: half the memory and the GPU's bfloat16 tensor cores (the default on a GPU without FP8);
- ``fp8``: the decoder's products in FP8 (``fp8``), refused on a device without them;
- ``auto``: fp32 on a CPU; on one GPU FP8 where the GPU has it and the teacher's next-token
  distributions measure within ``fp8.MAX_KLD`` of bfloat16's on the run's own text, else bf16.
  FP8 is not used across several processes (FSDP shards the layers it would replace).
"""

from __future__ import annotations

from edgellm.errors import BadInput
from edgellm.exporters.distill.ranks import Ranks

PRECISIONS = ("auto", "fp32", "bf16", "fp8")
BACKEND = "inductor"        # torch.compile's backend for the layers and the loss (tests count graphs with their own)


def check(precision: str, ranks: Ranks) -> None:
    """Refuse, before any work, a precision this run cannot have."""
    from edgellm.exporters.distill import fp8

    if precision not in PRECISIONS:
        raise BadInput(f"--teacher-precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
    if precision == "fp8" and not (fp8.available(ranks.device) and not ranks.distributed):
        raise BadInput("--teacher-precision fp8 needs one process on a GPU that multiplies FP8 (compute "
                       "capability 8.9 or newer: Ada, Hopper); use bf16")


def prepare(teacher, precision: str, ranks: Ranks, windows) -> dict:
    """Move ``teacher`` to the run's device in ``precision``; returns what was chosen (for the card)."""
    import torch

    from edgellm.exporters.distill import fp8

    check(precision, ranks)
    dev = ranks.device
    cuda = dev.startswith("cuda")
    chosen = precision if precision != "auto" else ("fp32" if not cuda else "bf16")
    teacher.to(dev, dtype={"fp32": torch.float32}.get(chosen, torch.bfloat16))   # fp8: bf16, its layers swapped below
    out = {"teacher_precision": chosen}
    want_fp8 = precision == "fp8" or (precision == "auto" and fp8.available(dev) and not ranks.distributed)
    if not want_fp8:
        return out
    fp8.convert(teacher)
    kld = fp8.measured_kld(teacher, [w.to(dev) for w in windows])
    out["teacher_fp8_kld"] = kld
    if precision == "auto" and not kld <= fp8.MAX_KLD:
        fp8.undo(teacher)
        out["teacher_precision"] = "bf16"
        out["teacher_fp8_refused"] = (f"FP8 moved the teacher's next-token distributions by {kld:.4f} nats "
                                      f"(more than {fp8.MAX_KLD}): kept bfloat16")
        return out
    fp8.commit(teacher)
    torch.cuda.empty_cache()
    out["teacher_precision"] = "fp8"
    return out


def compile_layers(model) -> None:
    """``torch.compile`` each decoder layer in place (regional compilation: one graph reused by
    every layer of the same shape, so compiling costs seconds, not minutes, and the rest of the
    Hugging Face model stays eager and unchanged)."""
    for layer in model.base_model.layers:
        layer.compile(dynamic=False, backend=BACKEND)


def uncompile_layers(model) -> None:
    """Undo ``compile_layers`` (the layers run eagerly again)."""
    for layer in getattr(model.base_model, "layers", []):
        layer._compiled_call_impl = None
