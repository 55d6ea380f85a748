"""What ``edgellm profile`` reports, the same for every backend: the record, the prompt, peak RSS."""

from __future__ import annotations

import os
import resource
import statistics
import sys
from dataclasses import asdict, dataclass
from typing import Callable


def default_threads() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return os.cpu_count() or 1


def peak_rss_bytes() -> int:
    """Peak resident memory of this process.  Linux: VmHWM, the high-water mark of this address
    space (ru_maxrss would also count a parent that forked us before exec).  Elsewhere ru_maxrss
    (bytes on macOS)."""
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if sys.platform == "darwin" else rss * 1024


@dataclass(frozen=True)
class Profile:
    threads: int
    prompt_tokens: int
    gen_tokens: int
    repeats: int
    load_s: float
    ttft_s: float
    prefill_tps: float
    decode_tps: float
    peak_rss_bytes: int
    depth: int = 0                                   # tokens already in the cache (llama-bench n_depth)
    samples_prefill_tps: tuple[float, ...] = ()      # one per repeat
    samples_decode_tps: tuple[float, ...] = ()

    def to_dict(self) -> dict:
        return asdict(self)


def profile_prompt(tokenize: Callable[..., list[int]], n: int) -> list[int]:
    """A deterministic ``n``-token prompt: BOS (when the model uses one), then repeated text."""
    base = tokenize("The quick brown fox jumps over the lazy dog. 0123456789 " * 4, add_bos=False) or [0]
    return (tokenize("", add_bos=True) + base * (n // len(base) + 1))[:n]


def summarize(runs: list[tuple[float, float, float]], threads: int, prompt_tokens: int, gen_tokens: int,
              load_s: float, depth: int = 0) -> Profile:
    """Medians over repeats of (prefill s, time to first token s, decode s), and every sample."""
    pre = tuple(prompt_tokens / r[0] for r in runs)
    dec = tuple(gen_tokens / r[2] if r[2] > 0 else 0.0 for r in runs)
    return Profile(threads=threads, prompt_tokens=prompt_tokens, gen_tokens=gen_tokens, repeats=len(runs),
                   load_s=load_s, ttft_s=statistics.median(r[1] for r in runs),
                   prefill_tps=statistics.median(pre), decode_tps=statistics.median(dec),
                   peak_rss_bytes=peak_rss_bytes(), depth=depth, samples_prefill_tps=pre,
                   samples_decode_tps=dec)


def depth_prefix(prompt: list[int], depth: int) -> list[int]:
    """``depth`` tokens of context to fill the cache with before a timed run (untimed)."""
    return (prompt * (depth // max(len(prompt), 1) + 1))[:depth] if depth else []
