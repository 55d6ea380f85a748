"""Calibration of the whole model at once (the reference the layer-at-a-time pass is tested
against): what the model's own activations say about which weights matter.

The model runs in float32 through transformers on calibration text (``edgellm.textdata``'s training
split by default, or the user's file), in windows of ``context`` tokens, and three statistics are
gathered, keyed by checkpoint tensor name:

- ``imatrix``: per input column of every linear layer, the mean of x² over all tokens: the
  importance weights llama.cpp's ``llama-imatrix`` collects and ggml's quantizers take (rounding
  error in a column matters in proportion to the energy of the activations it multiplies);
- ``hessian`` (on request): the full XᵀX / n per linear layer, for error-compensating rounding (GPTQ);
- ``fisher`` (on request): the mean squared gradient of the log-likelihood of tokens sampled from
  the model's own predictions, per weight: the diagonal of the Fisher information, so
  ½ Σ F·(w - q(w))² predicts how much KL divergence rounding a tensor costs, which is what spends
  bytes where they buy the most (``gguf_mix``).

Inputs are checked first: text too short for one window, or a tokenizer that cannot encode it
without unknown tokens, is an error before any work.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgellm.errors import EdgeLLMError
from edgellm.exporters.calibrate.common import Calibration, calibration_windows, default_text, gram_done, input_hooks
from edgellm.exporters.calibrate.fisher import sample_tokens


def needed_bytes(model, context: int, hessian: bool, fisher: bool) -> int:
    """Host memory calibration needs: the float32 model, the Fisher accumulator, one XᵀX per
    distinct layer input, and a window's activations and logits (with their gradients)."""
    weights = 4 * model.n_params
    grams = 4 * model.n_layers * (3 * model.hidden ** 2 + model.ffn ** 2) if hessian else 0
    acts = 4 * context * (model.vocab * 6 + model.n_layers * (12 * model.hidden + 4 * model.ffn))
    return weights * (2 if fisher else 1) + grams + acts + (512 << 20)


def _preflight(model_dir: Path, context: int, hessian: bool, fisher: bool) -> None:
    from edgellm import models
    from edgellm.runtime.hostinfo import probe
    from edgellm.units import fmt_bytes

    need = needed_bytes(models.load_config(str(model_dir)), context, hessian, fisher)
    have = probe().ram_bytes
    if need > 0.9 * have:
        raise EdgeLLMError(f"calibrating {model_dir} needs about {fmt_bytes(need)} of RAM; this machine has "
                       f"{fmt_bytes(have)} (calibrate on a bigger host, or export without --calibrate)")


def collect(model_dir: Path, text: str | None = None, context: int = 512, max_windows: int = 16,
            hessian: bool = False, fisher: bool = False, trust_remote_code: bool = False,
            threads: int | None = None, seed: int = 0, progress=lambda i, n: None) -> Calibration:
    import torch

    from edgellm.exporters.io.reference import load_reference

    if threads:
        torch.set_num_threads(threads)
    _preflight(Path(model_dir), context, hessian, fisher)
    tok, model = load_reference(Path(model_dir), trust_remote_code, role=("the model to calibrate", ""))
    context = min(context, int(getattr(model.config, "max_position_embeddings", context) or context))
    wins = calibration_windows(tok, default_text() if text is None else text, context, max_windows)
    cal = Calibration(tokens=sum(map(len, wins)), windows=len(wins), context=context)
    sums: dict[str, torch.Tensor] = {}
    grams: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}

    shared: dict[str, str] = {}       # layers reading the same input (q/k/v, gate/up): one XᵀX
    handles, last = input_hooks(model, "", sums, counts, grams, shared, hessian)
    # (the input is held only between consecutive hooks of one forward pass)
    params = [(n, p) for n, p in model.named_parameters() if p.dim() == 2]
    fish = {n: torch.zeros_like(p) for n, p in params} if fisher else {}

    def squared(name):
        def accumulate(p):                # as each gradient completes: square it in, drop it, so
            fish[name].addcmul_(p.grad, p.grad)     # no moment holds every gradient at once
            p.grad = None
        return accumulate

    for p in model.parameters():
        p.requires_grad_(fisher and p.dim() == 2)
    if fisher:
        handles += [p.register_post_accumulate_grad_hook(squared(n)) for n, p in params]
    gen = torch.Generator().manual_seed(seed)
    try:
        for k, w in enumerate(wins):
            x = torch.tensor([w])
            if fisher:
                logits = model(x).logits[0].float()
                with torch.no_grad():
                    sampled = sample_tokens(logits, gen)
                torch.nn.functional.cross_entropy(logits, sampled, reduction="sum").backward()
            else:
                with torch.no_grad():
                    model(x)
            last["input"] = None
            progress(k + 1, len(wins))
    finally:
        for h in handles:
            h.remove()
    # per input feature, i.e. per GGUF column, for Linear and GPT-2's transposed Conv1D alike
    for name, s in sums.items():
        cal.imatrix[name] = (s / counts[name]).numpy().astype(np.float32)
        if hessian:
            cal.hessian[name] = (gram_done(grams[name]) / counts[name]).numpy()
    for name, first in shared.items():
        cal.imatrix[name] = cal.imatrix[first]
        if hessian:
            cal.hessian[name] = cal.hessian[first]
    for n, f in fish.items():
        cal.fisher[n] = f.div_(cal.tokens).numpy()       # in place: one copy of the Fisher, not two
    return cal
