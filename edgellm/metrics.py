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


SLICE_BYTES = 64 << 20       # float64 log-probabilities of one slice of positions


def rows_per_slice(vocab: int) -> int:
    """Positions per slice so that one slice's float64 log-probabilities stay near SLICE_BYTES,
    whatever the vocabulary (a 262,144-token one gets 32 rows, a 32,000-token one 262)."""
    return max(1, SLICE_BYTES // (8 * max(1, vocab)))


def aligned(left, right):
    """Two streams of (first position, logits of consecutive positions), sliced differently, as
    one stream of (first position, left rows, right rows) over the same positions: memory holds a
    slice of each, never [positions, vocab]."""
    left, right = iter(left), iter(right)
    la = ra = 0                              # first position of each side's pending rows
    lrows = rrows = None
    while True:
        if lrows is None or len(lrows) == 0:
            nxt = next(left, None)
            if nxt is None:
                return
            la, lrows = nxt
        if rrows is None or len(rrows) == 0:
            nxt = next(right, None)
            if nxt is None:
                return
            ra, rrows = nxt
        if la != ra:
            raise ValueError(f"logit slices out of step: positions {la} and {ra}")
        n = min(len(lrows), len(rrows))
        yield la, lrows[:n], rrows[:n]
        la, lrows, ra, rrows = la + n, lrows[n:], ra + n, rrows[n:]


class Tally:
    """Agreement of a candidate with a reference, added a slice of positions at a time: memory
    holds one slice's log-probabilities and a few numbers per position, never [positions, vocab]."""

    def __init__(self):
        self.kld: list[np.ndarray] = []
        self.same = 0
        self.positions = 0
        self.nll_r = self.nll_c = 0.0
        self.n_next = 0
        self.max_abs = 0.0

    def add(self, reference: np.ndarray, candidate: np.ndarray, next_tokens) -> None:
        """Logits [n, vocab] of the same positions; ``next_tokens[i]`` is the token position i
        predicts (negative: none, as for a window's last position)."""
        if reference.shape != candidate.shape:
            raise ValueError(f"logit shapes differ: {reference.shape} vs {candidate.shape}")
        nxt = np.asarray(next_tokens, dtype=np.int64)
        rows = rows_per_slice(reference.shape[-1])
        for a in range(0, len(reference), rows):
            r, c = reference[a:a + rows], candidate[a:a + rows]
            lr, lc = log_softmax(r), log_softmax(c)
            self.kld.append((np.exp(lr) * (lr - lc)).sum(axis=-1))
            self.same += int((r.argmax(-1) == c.argmax(-1)).sum())
            self.positions += len(r)
            n = nxt[a:a + rows]
            has = np.flatnonzero(n >= 0)
            self.nll_r -= float(lr[has, n[has]].sum())
            self.nll_c -= float(lc[has, n[has]].sum())
            self.n_next += len(has)
            self.max_abs = max(self.max_abs, float(np.abs(r.astype(np.float64) - c).max()))

    def result(self) -> Agreement:
        k = np.concatenate(self.kld) if self.kld else np.zeros(0)
        mean = lambda x: x / self.n_next if self.n_next else 0.0      # noqa: E731
        return Agreement(
            positions=self.positions, mean_kld=float(k.mean()) if len(k) else 0.0,
            p99_kld=float(np.percentile(k, 99)) if len(k) else 0.0,
            top1_agreement=self.same / self.positions if self.positions else 0.0,
            ppl_reference=float(np.exp(mean(self.nll_r))), ppl_candidate=float(np.exp(mean(self.nll_c))),
            max_abs_logit_diff=self.max_abs)


def compare(reference: np.ndarray, candidate: np.ndarray, tokens: np.ndarray) -> Agreement:
    """``reference``/``candidate``: logits [positions, vocab] for the same ``tokens``; position i
    predicts token i+1 (the last position predicts nothing and only counts in KLD and top-1)."""
    if reference.shape != candidate.shape:
        raise ValueError(f"logit shapes differ: {reference.shape} vs {candidate.shape}")
    t = Tally()
    t.add(reference, candidate, np.append(np.asarray(tokens[1:], dtype=np.int64), -1)[:len(reference)])
    return t.result()
