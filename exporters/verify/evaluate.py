"""``edgellm eval``: perplexity over text in windows, and agreement with a reference model.

A target is anything edgellm can score: a Hugging Face folder or hub id (through transformers, on
the host), a GGUF or ONNX bundle, or a bare .gguf/.onnx file (through the device runtimes; no
torch).  The text is cut into non-overlapping windows of ``context`` tokens; each window is scored
on its own, so every figure is at that context.  With a reference, both models must tokenize the
text identically (same vocabulary), and KL divergence (reference || target), its 99th percentile,
top-1 agreement and both perplexities are computed position by position.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from edgellm.errors import BadInput
from edgellm.metrics import log_softmax


class HFScorer:
    """A transformers model and its tokenizer, on the host."""

    def __init__(self, tok, model, name: str):
        self.tok, self.model, self.name = tok, model, name

    @classmethod
    def load(cls, target: str) -> "HFScorer":
        from edgellm.exporters.io.reference import load_reference
        from edgellm.exporters.io.weights_source import weights_folder

        return cls(*load_reference(weights_folder(target)), target)

    def tokenize(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False)

    def logits(self, ids: list[int]) -> np.ndarray:
        from edgellm.exporters.verify.verify import _hf_logits
        return _hf_logits(self.model, ids)


class _Runtime:
    def __init__(self, model, name: str):
        self.model, self.name = model, name

    def tokenize(self, text: str) -> list[int]:
        return self.model.tokenize(text, add_bos=False)

    def logits(self, ids: list[int]) -> np.ndarray:
        return self.model.logits(ids)


def open_target(target: str, context: int, threads: int | None = None):
    """A scorer (``tokenize``, ``logits``, ``name``) for whatever ``target`` names."""
    p = Path(target)
    if p.is_dir() and (p / "manifest.json").is_file():
        from edgellm.runtime.backend import open_backend
        return _Runtime(open_backend(p, n_ctx=context, threads=threads, scoring=True)[1], target)
    if p.suffix in (".gguf", ".onnx") and p.is_file():
        from edgellm.runtime.backend import open_file
        return _Runtime(open_file(p, n_ctx=context, threads=threads, scoring=True), target)
    import importlib.util
    if importlib.util.find_spec("torch") is None:
        raise BadInput(f"{target}: not a bundle or model file; scoring a Hugging Face model needs "
                       "pip install 'edgellm[export]'")
    return HFScorer.load(target)


@dataclass(frozen=True)
class Result:
    target: str
    context: int
    windows: int
    tokens_scored: int
    perplexity: float
    reference: str | None = None
    reference_perplexity: float | None = None
    mean_kld: float | None = None
    p99_kld: float | None = None
    top1_agreement: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def windows_of(ids: list[int], context: int, max_windows: int) -> list[list[int]]:
    if context < 2:
        raise BadInput("--context must be at least 2 tokens")
    n = min(len(ids) // context, max_windows)
    if n == 0:
        raise BadInput(f"the text is {len(ids)} tokens, shorter than one window of {context}; "
                       "give more text (--data) or a smaller --context")
    return [ids[i * context:(i + 1) * context] for i in range(n)]


def evaluate(target, text: str, context: int = 512, max_windows: int = 8, reference=None,
             progress=lambda i, n: None) -> Result:
    ids = target.tokenize(text)
    if reference is not None:
        ref_ids = reference.tokenize(text)
        if ref_ids != ids:
            at = next((i for i, (a, b) in enumerate(zip(ids, ref_ids)) if a != b), min(len(ids), len(ref_ids)))
            raise BadInput(f"{reference.name} tokenizes the text differently from {target.name} (first difference "
                           f"at token {at}): a reference must share the target's vocabulary")
    wins = windows_of(ids, context, max_windows)
    nll, nll_ref, kld, same = [], [], [], []
    for k, w in enumerate(wins):
        lc = log_softmax(target.logits(w))
        nxt, pos = np.asarray(w[1:]), np.arange(len(w) - 1)
        nll.append(-lc[pos, nxt])
        if reference is not None:
            lr = log_softmax(reference.logits(w))
            if lr.shape != lc.shape:
                raise BadInput(f"{reference.name} has {lr.shape[-1]} logits per token, {target.name} "
                               f"{lc.shape[-1]}: a reference must share the target's vocabulary")
            nll_ref.append(-lr[pos, nxt])
            kld.append((np.exp(lr) * (lr - lc)).sum(-1))
            same.append(lr.argmax(-1) == lc.argmax(-1))
        progress(k + 1, len(wins))
    out = {"target": target.name, "context": context, "windows": len(wins),
           "tokens_scored": int(sum(len(x) for x in nll)), "perplexity": float(np.exp(np.concatenate(nll).mean()))}
    if reference is not None:
        k_all = np.concatenate(kld)
        out.update(reference=reference.name, reference_perplexity=float(np.exp(np.concatenate(nll_ref).mean())),
                   mean_kld=float(k_all.mean()), p99_kld=float(np.percentile(k_all, 99)),
                   top1_agreement=float(np.concatenate(same).mean()))
    return Result(**out)
