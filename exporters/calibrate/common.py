"""What every calibration pass shares: the statistics' record, the calibration text and its
windows, and the hooks that gather each linear layer's input statistics.  The package's ground
floor: it imports nothing else of the package."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from edgellm.errors import BadInput

MIN_WINDOWS = 2
MIN_CHARS_PER_TOKEN = 1.0
LOGITS_BYTES = 16 << 20      # the head's logits are computed for this many bytes' worth of tokens at a time


@dataclass
class Calibration:
    tokens: int
    windows: int
    context: int
    imatrix: dict[str, np.ndarray] = field(default_factory=dict)
    hessian: dict[str, np.ndarray] = field(default_factory=dict)
    fisher: dict[str, np.ndarray] = field(default_factory=dict)
    costs: object = None             # what the Fisher was turned into as it came (gguf.mix.Costs)
    device: str = "cpu"              # where it was computed
    precision: str = "float32"       # the matrix products' type (layers.compute_dtype)
    fisher_tokens: int = 0           # the tokens the Fisher diagonal was estimated on
    fisher_per: str = "window"       # its samples: a window's squared gradient, or each token's


def default_text(limit_bytes: int = 1 << 20) -> str:
    from edgellm.textdata import training_text
    return training_text(limit_bytes)


def calibration_windows(tok, text: str, context: int, max_windows: int) -> list[list[int]]:
    ids = tok.encode(text, add_special_tokens=False)
    unk = getattr(tok, "unk_token_id", None)
    n_unk = sum(i == unk for i in ids) if unk is not None else 0
    # text the tokenizer was built for takes 2-5 characters a token; far fewer means unknown
    # tokens or byte fallbacks: a script or vocabulary the model never saw
    if ids and (n_unk > 0.05 * len(ids) or len(text) / len(ids) < MIN_CHARS_PER_TOKEN):
        raise BadInput(f"the calibration text is not in the model's vocabulary ({len(ids)} tokens for "
                       f"{len(text)} characters, {n_unk} unknown): give text like what the model will read")
    n = min(len(ids) // context, max_windows)
    if n < MIN_WINDOWS:
        raise BadInput(f"the calibration text is {len(ids)} tokens; calibration needs at least "
                       f"{MIN_WINDOWS} windows of {context} (give more text with --calib-data)")
    return [ids[i * context:(i + 1) * context] for i in range(n)]


def input_hooks(module, prefix: str, sums, counts, grams, shared, hessian: bool):
    """Forward hooks gathering, for every linear input of ``module`` (checkpoint names: ``prefix``
    + the module's own), the sum of x² per column, the row count and (``hessian``) XᵀX.  Layers
    reading the same input (q/k/v, gate/up) are recorded once and pointed at it in ``shared``.
    Returns the hook handles and the holder of the last input seen (reset it between passes)."""
    import torch

    last = {"input": None, "name": None}
    handles = []
    for name, mod, _ in linear_inputs(module):
        def record(_mod, args, full=prefix + name):
            if args[0] is last["input"]:
                shared.setdefault(full, last["name"])
                return
            last["input"], last["name"] = args[0], full
            x = args[0].detach().reshape(-1, args[0].shape[-1]).float()
            with torch.autocast(x.device.type, enabled=False):     # sums in float32, whatever the products
                sums[full] = sums.get(full, 0) + (x * x).sum(0)
                counts[full] = counts.get(full, 0) + x.shape[0]
                if hessian:                 # in place: a 14,336-wide input's XᵀX is 822 MB
                    if full in grams:
                        grams[full].addmm_(x.T, x)
                    else:
                        grams[full] = x.T @ x
        handles.append(mod.register_forward_pre_hook(record))
    return handles, last


def linear_inputs(model):
    """(weight name in the checkpoint, module, transposed) for every matrix multiply with a weight:
    nn.Linear, GPT-2's Conv1D; a head tied to the embeddings is recorded under the embedding's name."""
    import torch

    names = {id(p): n for n, p in model.named_parameters()}     # tied parameters: the first name
    for mod_name, mod in model.named_modules():
        w = getattr(mod, "weight", None)
        if not isinstance(w, torch.nn.Parameter) or w.dim() != 2 or isinstance(mod, torch.nn.Embedding):
            continue
        if isinstance(mod, torch.nn.Linear):
            yield names[id(w)], mod, False
        elif type(mod).__name__ == "Conv1D":
            yield names[id(w)], mod, True
