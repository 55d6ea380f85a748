"""Calibration: what the model's own activations say about which weights matter.

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

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgellm.errors import BadInput, EdgeLLMError

MIN_WINDOWS = 2
MIN_CHARS_PER_TOKEN = 1.0


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
    precision: str = "float32"       # the matrix products' type (calibrate_layers.compute_dtype)
    fisher_tokens: int = 0           # the tokens the Fisher diagonal was estimated on
    fisher_per: str = "window"       # its samples: a window's squared gradient, or each token's


@dataclass
class CalibrationData:
    """What an export calibrates on; the statistics, once gathered, are kept for the next
    candidate of the same command (a quality gate may export several)."""
    text: str | None = None          # None: the default (edgellm.textdata's training split)
    source: str = "default: Python standard library source (edgellm.textdata training split)"
    windows: int = 16
    context: int = 512
    device: str = "auto"             # where the statistics are computed (compute.resolve)
    precision: str = "auto"          # the products' type (calibrate_layers.compute_dtype)
    fisher_windows: int | None = None    # windows the Fisher is estimated on (None: calibrate_layers.FISHER_WINDOWS; 0: all)
    fisher_per: str | None = None    # "token" or "window" (None: calibrate_layers.FISHER_PER)
    _done: list = field(default_factory=list)

    def stats(self, model_dir: Path, hessian: bool = False, fisher: bool = False, ckpt=None, sink=None,
              **kw) -> Calibration:
        """Gathered a decoder layer at a time (``calibrate_layers``); ``sink(cal)`` -> what takes
        each tensor's Fisher as it is done instead of keeping it in ``cal.fisher`` (see there)."""
        from edgellm.exporters.calibrate_layers import collect_layerwise
        from edgellm.exporters.io.checkpoint import open_checkpoint

        for (folder, h, f), cal in self._done:
            if folder == str(model_dir) and (h or not hessian) and (f or not fisher):
                return cal
        cal = collect_layerwise(Path(model_dir), ckpt or open_checkpoint(Path(model_dir)), self.text, self.context,
                                self.windows, hessian=hessian, fisher=fisher, fisher_sink=sink,
                                device=self.device, precision=self.precision,
                                **({"fisher_windows": self.fisher_windows} if self.fisher_windows is not None else {}),
                                **({"fisher_per": self.fisher_per} if self.fisher_per else {}), **kw)
        self._done.append(((str(model_dir), hessian, fisher), cal))
        return cal

    def check(self, model_dir: Path, context: int, trust_remote_code: bool = False) -> None:
        """The text's faults (too short, not the model's vocabulary) before any work."""
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=trust_remote_code)
        calibration_windows(tok, default_text() if self.text is None else self.text, context, self.windows)

    def describe(self, cal: Calibration) -> dict:
        return {"text": self.source, "tokens": cal.tokens, "windows": cal.windows, "context": cal.context,
                "device": cal.device, "precision": cal.precision, "fisher_tokens": cal.fisher_tokens,
                "fisher_per": cal.fisher_per}


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


def _preflight_layers(model_dir: Path, context: int, windows: int, hessian: bool, fisher: bool,
                      keep_fisher: bool, device: str = "cpu", work_dir: Path | None = None):
    """``calibrate_memory.preflight`` for the model in ``model_dir``: refused before any work."""
    import tempfile

    from edgellm import models
    from edgellm.exporters.calibrate_memory import preflight

    model = models.load_config(str(model_dir))
    return preflight(model, min(context, model.max_context), windows, hessian, fisher, keep_fisher, device,
                     Path(work_dir or tempfile.gettempdir()), str(model_dir))


def input_hooks(module, prefix: str, sums, counts, grams, shared, hessian: bool):
    """Forward hooks gathering, for every linear input of ``module`` (checkpoint names: ``prefix``
    + the module's own), the sum of x² per column, the row count and (``hessian``) XᵀX.  Layers
    reading the same input (q/k/v, gate/up) are recorded once and pointed at it in ``shared``.
    Returns the hook handles and the holder of the last input seen (reset it between passes)."""
    import torch

    last = {"input": None, "name": None}
    handles = []
    for name, mod, _ in _linear_inputs(module):
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


def _linear_inputs(model):
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


def collect(model_dir: Path, text: str | None = None, context: int = 512, max_windows: int = 16,
            hessian: bool = False, fisher: bool = False, trust_remote_code: bool = False,
            threads: int | None = None, seed: int = 0, progress=lambda i, n: None) -> Calibration:
    import torch

    from edgellm.exporters.verify.verify import _hf

    if threads:
        torch.set_num_threads(threads)
    _preflight(Path(model_dir), context, hessian, fisher)
    tok, model = _hf(Path(model_dir), trust_remote_code)
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
                    sampled = torch.multinomial(torch.softmax(logits, -1), 1, generator=gen)[:, 0]
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
            cal.hessian[name] = (grams[name] / counts[name]).numpy()
    for name, first in shared.items():
        cal.imatrix[name] = cal.imatrix[first]
        if hessian:
            cal.hessian[name] = cal.hessian[first]
    for n, f in fish.items():
        cal.fisher[n] = f.div_(cal.tokens).numpy()       # in place: one copy of the Fisher, not two
    return cal
