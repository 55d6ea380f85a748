"""A profiling session on the device: the conditions before and after, a profile per context
depth, energy per generated token where the platform exposes it, an optional sustained run, and
the results as llama-bench's JSON records.

llama-bench (llama.cpp's benchmark) prints one record per test: ``pp512`` (a 512-token prompt,
``n_gen`` 0) and ``tg128`` (128 generated tokens, ``n_prompt`` 0), each with ``n_depth``,
``avg_ts``, ``stddev_ts``, ``samples_ts`` and the model and build fields.  ``records()`` writes
those field names, so scripts written for llama-bench's ``-o json`` read edgellm's; edgellm's own
figures (peak RSS, TTFT, load time, the plan's prediction, the conditions) ride along in each
record under ``"edgellm"``.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field

from edgellm.runtime import conditions
from edgellm.runtime.profiling import Profile


SAMPLE_S = 1.0                 # one sustained-run sample per second


@dataclass
class Session:
    profiles: list[Profile]
    before: dict
    after: dict
    joules_per_token: float | str
    sustained: list[dict] = field(default_factory=list)


def run_session(model, prompt_tokens: int, gen_tokens: int, repeats: int, depths: list[int],
                sustained_s: float = 0.0) -> Session:
    before = conditions.snapshot(model.threads)
    e0 = conditions.energy_uj()
    profiles = [model.profile(prompt_tokens, gen_tokens, repeats, depth=d) for d in depths]
    e1 = conditions.energy_uj()
    used = conditions.joules(e0, e1)
    generated = sum(p.gen_tokens * p.repeats for p in profiles)
    per_token = used / generated if isinstance(used, float) and generated else conditions.UNAVAILABLE
    samples = _sustained(model, gen_tokens, sustained_s) if sustained_s > 0 else []
    return Session(profiles, before, conditions.snapshot(model.threads), per_token, samples)


def _sustained(model, gen_tokens: int, seconds: float) -> list[dict]:
    """Decode tokens/s and temperatures sampled over ``seconds`` of back-to-back decoding, so
    throttling shows as a falling curve."""
    out, t0 = [], time.monotonic()
    while time.monotonic() - t0 < seconds:
        start, rates = time.monotonic(), []
        while time.monotonic() - start < SAMPLE_S and time.monotonic() - t0 < seconds:
            rates.append(model.profile(8, gen_tokens, 1).decode_tps)
        out.append({"t_s": round(time.monotonic() - t0, 2), "decode_tps": statistics.median(rates),
                    "temperatures_c": conditions.temperatures()})
    return out


def _stats(samples: tuple[float, ...]) -> tuple[float, float]:
    if not samples:
        return 0.0, 0.0
    return statistics.fmean(samples), statistics.stdev(samples) if len(samples) > 1 else 0.0


def records(session: Session, model_info: dict, predicted: dict, bundle: str) -> list[dict]:
    """llama-bench JSON records (a pp and a tg test per depth), each with edgellm's figures."""
    out = []
    shared = {"build_commit": model_info.get("build_commit", conditions.UNAVAILABLE),
              "cpu_info": session.before["cpu_model"], "model_filename": model_info.get("file"),
              "model_type": model_info.get("type"), "model_size": model_info.get("size"),
              "model_n_params": model_info.get("n_params"), "type_k": model_info.get("type_k"),
              "type_v": model_info.get("type_v"), "backends": model_info.get("backend")}
    for p in session.profiles:
        common = {**shared, "n_threads": p.threads, "n_depth": p.depth}
        mine = {"bundle": bundle, "measured": p.to_dict(), "predicted": predicted,
                "conditions": {"before": session.before, "after": session.after,
                               "joules_per_generated_token": session.joules_per_token},
                "sustained": session.sustained}
        for kind, n_prompt, n_gen, samples in (("pp", p.prompt_tokens, 0, p.samples_prefill_tps),
                                               ("tg", 0, p.gen_tokens, p.samples_decode_tps)):
            avg, sd = _stats(samples)
            out.append({**common, "test": f"{kind}{n_prompt or n_gen}", "n_prompt": n_prompt, "n_gen": n_gen,
                        "avg_ts": avg, "stddev_ts": sd, "samples_ts": list(samples),
                        "avg_ns": int(1e9 * (n_prompt or n_gen) / avg) if avg else 0, "edgellm": mine})
    return out
