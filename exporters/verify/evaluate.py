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
from edgellm.textdata import text_ids
from edgellm.metrics import Tally, aligned, log_softmax, rows_per_slice
from edgellm.runtime.backend import logit_slices


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
        return text_ids(self.tok, text)

    def logits(self, ids: list[int]) -> np.ndarray:
        from edgellm.exporters.verify.verify import _hf_logits
        return _hf_logits(self.model, ids)

    def slices(self, ids: list[int]):
        """(first position, logits of a slice of positions): never [positions, vocab] whole."""
        from edgellm.exporters.verify.verify import hf_logit_slices
        return hf_logit_slices(self.model, ids)


class _Runtime:
    def __init__(self, model, name: str):
        self.model, self.name = model, name

    def tokenize(self, text: str) -> list[int]:
        return self.model.tokenize(text, add_bos=False)

    def logits(self, ids: list[int]) -> np.ndarray:
        return self.model.logits(ids)

    def slices(self, ids: list[int]):
        return logit_slices(self.model, ids)


def _pairs(target, reference, ids: list[int]):
    """(first position, target logits, reference logits or None) over a window, a slice of
    positions at a time on both sides (``metrics.aligned``)."""
    if reference is None:
        for a, t in target.slices(ids):
            yield a, t, None
    else:
        yield from aligned(target.slices(ids), reference.slices(ids))


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
    nll: list[np.ndarray] = []
    tally = Tally() if reference is not None else None
    for k, w in enumerate(wins):
        nxt = np.append(np.asarray(w[1:], dtype=np.int64), -1)
        for a, t, r in _pairs(target, reference, w):
            n = len(t)
            if tally is not None:
                if r.shape != t.shape:
                    raise BadInput(f"{reference.name} has {r.shape[-1]} logits per token, {target.name} "
                                   f"{t.shape[-1]}: a reference must share the target's vocabulary")
                tally.add(r, t, nxt[a:a + n])
            rows = rows_per_slice(t.shape[-1])
            for b in range(0, n, rows):
                lc = log_softmax(t[b:b + rows])
                m = nxt[a + b:a + b + len(lc)]
                has = np.flatnonzero(m >= 0)
                nll.append(-lc[has, m[has]])
        progress(k + 1, len(wins))
    out = {"target": target.name, "context": context, "windows": len(wins),
           "tokens_scored": int(sum(len(x) for x in nll)), "perplexity": float(np.exp(np.concatenate(nll).mean()))}
    if tally is not None:
        agreement = tally.result()
        out.update(reference=reference.name, reference_perplexity=agreement.ppl_reference,
                   mean_kld=agreement.mean_kld, p99_kld=agreement.p99_kld, top1_agreement=agreement.top1_agreement)
    return Result(**out)
