"""Comparing a model's next-token distributions against a reference: numpy only, so the same code
serves export verification on the host and evaluation anywhere."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


def log_softmax(logits: np.ndarray) -> np.ndarray:
    x = logits.astype(np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


@dataclass(frozen=True)
class Agreement:
    positions: int
    mean_kld: float          # KL(reference || candidate), nats per token
    p99_kld: float
    top1_agreement: float    # share of positions with the same argmax
    ppl_reference: float     # perplexity of the next tokens under each model
    ppl_candidate: float
    max_abs_logit_diff: float

    @property
    def ppl_ratio(self) -> float:
        return self.ppl_candidate / self.ppl_reference

    def to_dict(self) -> dict:
        return {**asdict(self), "ppl_ratio": self.ppl_ratio}


def compare(reference: np.ndarray, candidate: np.ndarray, tokens: np.ndarray) -> Agreement:
    """``reference``/``candidate``: logits [positions, vocab] for the same ``tokens``; position i
    predicts token i+1 (the last position predicts nothing and only counts in KLD and top-1)."""
    if reference.shape != candidate.shape:
        raise ValueError(f"logit shapes differ: {reference.shape} vs {candidate.shape}")
    lr, lc = log_softmax(reference), log_softmax(candidate)
    kld = (np.exp(lr) * (lr - lc)).sum(axis=-1)
    nxt = np.asarray(tokens[1:])
    idx = np.arange(len(nxt))
    nll_r = -lr[idx, nxt].mean() if len(nxt) else 0.0
    nll_c = -lc[idx, nxt].mean() if len(nxt) else 0.0
    return Agreement(
        positions=len(kld), mean_kld=float(kld.mean()), p99_kld=float(np.percentile(kld, 99)),
        top1_agreement=float((reference.argmax(-1) == candidate.argmax(-1)).mean()),
        ppl_reference=float(np.exp(nll_r)), ppl_candidate=float(np.exp(nll_c)),
        max_abs_logit_diff=float(np.abs(reference.astype(np.float64) - candidate).max()))
