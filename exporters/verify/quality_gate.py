"""Quality gates: export the smallest build whose *measured* loss is within the user's limits.

The candidates (builds of one format that fit the device's budgets) are ordered by predicted file
size.  Each one tried is exported and verified for real into a trial folder beside the output;
a binary search over that order finds the smallest that passes (quality falls with size across
these types, so at most log2(n) + 1 exports are needed), and that trial becomes the bundle.  The
others are deleted.  When none passes, nothing is left behind and the error lists what each
trial measured.
"""

from __future__ import annotations

import dataclasses
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from edgellm.errors import NothingFits
from edgellm.core.output import claimed, temp_name
from edgellm.exporters.package import is_bundle
from edgellm.exporters.package import swap_in


@dataclass(frozen=True)
class Gate:
    max_kld: float | None = None
    max_ppl_increase: float | None = None      # a fraction: 0.02 = perplexity at most 2% higher

    def __bool__(self) -> bool:
        return self.max_kld is not None or self.max_ppl_increase is not None

    def failures(self, held_out: dict) -> list[str]:
        out = []
        if self.max_kld is not None and held_out["mean_kld"] > self.max_kld:
            out.append(f"KLD {held_out['mean_kld']:.5f} > {self.max_kld:g}")
        if self.max_ppl_increase is not None and held_out["ppl_ratio"] - 1 > self.max_ppl_increase:
            out.append(f"perplexity +{(held_out['ppl_ratio'] - 1):.2%} > +{self.max_ppl_increase:.2%}")
        return out

    def describe(self) -> str:
        parts = []
        if self.max_kld is not None:
            parts.append(f"mean KLD <= {self.max_kld:g}")
        if self.max_ppl_increase is not None:
            parts.append(f"perplexity increase <= {self.max_ppl_increase:.2%}")
        return " and ".join(parts)


@dataclass(frozen=True)
class Trial:
    label: str
    file_bytes: int
    mean_kld: float
    ppl_ratio: float
    passed: bool

    def to_dict(self) -> dict:
        return self.__dict__.copy()


def smallest_passing(choices: list, export: Callable, out: Path, force: bool, gate: Gate,
                     say: Callable[[str], None] = lambda s: None):
    """``choices``: builds ordered smallest first; ``export(choice, folder)`` writes and verifies a
    bundle there and returns its ExportResult.  Returns (result moved to ``out``, its choice, trials)."""
    with claimed(out, force, is_bundle):
        return _search(choices, export, out, gate, say)


def _search(choices: list, export: Callable, out: Path, gate: Gate, say: Callable[[str], None]):
    trials: list[Trial] = []
    results: dict[int, object] = {}

    def attempt(i: int) -> bool:
        c = choices[i]
        folder = temp_name(out, "trial", f"-{i}")
        say(f"quality gate: trying {c.label} ({len(trials) + 1} tried so far)")
        r = export(c, folder)
        h = r.verification["held_out"]
        ok = not gate.failures(h)
        trials.append(Trial(c.label, r.file_bytes, h["mean_kld"], h["ppl_ratio"], ok))
        results[i] = r
        return ok

    try:
        lo, hi, best = 0, len(choices) - 1, None
        while lo <= hi:
            mid = (lo + hi) // 2
            if attempt(mid):
                best, hi = mid, mid - 1
            else:
                lo = mid + 1
        if best is None:
            tried = "; ".join(f"{t.label}: KLD {t.mean_kld:.5f}, perplexity x{t.ppl_ratio:.4f}" for t in trials)
            raise NothingFits(f"no build meets {gate.describe()} (measured {tried}); allow more loss, "
                              "try --calibrate, or a bigger device")
        final = results[best]
        swap_in(final.bundle, out)
        return dataclasses.replace(final, bundle=out, artifact=out / final.artifact.name), choices[best], trials
    finally:
        for i, r in results.items():
            if r.bundle.exists() and r.bundle != out:
                shutil.rmtree(r.bundle, ignore_errors=True)
