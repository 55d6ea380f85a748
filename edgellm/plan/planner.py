"""The planner: every candidate build of a model for a device, predicted, checked against the
budgets, and the best-quality one that fits chosen, with a reason for every other."""

from __future__ import annotations

from dataclasses import dataclass, field

from edgellm.devices.schema import DeviceProfile
from edgellm.errors import BadInput
from edgellm.models.config import ModelConfig
from edgellm.plan.candidates import (  # noqa: F401 - the planner's public names, as before
    DEFAULT_MAX_KLD, LOSSLESS_KLD, Budgets, Candidate, budgets_for, buildable_formats, candidate_choices, evaluate, evaluate_choice,
    failures, quality_rank)
from edgellm.formats import formats_of, names


@dataclass(frozen=True)
class Plan:
    model: ModelConfig
    device: DeviceProfile
    budgets: Budgets
    candidates: tuple[Candidate, ...]   # best quality first
    winner: Candidate | None
    suggestions: tuple[str, ...] = field(default=())


def _with_verdicts(cands: list[Candidate], winner: Candidate | None) -> tuple[Candidate, ...]:
    out = []
    for c in cands:
        if c is winner:
            v = ("chosen: fastest lossless build that fits" if quality_rank(c) == 0
                 else "chosen: best quality that fits")
        elif not c.fits:
            v = "; ".join(c.failures)
        elif quality_rank(c) > quality_rank(winner):
            v = "fits; lower quality"
        else:
            v = "fits; as good, but slower or a less preferred format"
        out.append(Candidate(c.estimate, c.quality, c.failures, v))
    return tuple(out)


def plan(model: ModelConfig, device: DeviceProfile, budgets: Budgets,
         formats: tuple[str, ...] | None = None, advise: bool = True, calibrated: bool = False) -> Plan:
    if budgets.context < 16:
        raise BadInput(f"--context {budgets.context} is too short to be useful (at least 16)")
    if model.max_context and budgets.context > model.max_context:
        raise BadInput(f"--context {budgets.context} is longer than {model.name} supports "
                       f"({model.max_context} tokens)")
    refused = [f.model_problem(model) for f in formats_of(formats)]
    if all(refused):
        raise BadInput("; ".join(dict.fromkeys(r for r in refused if r)))
    cands = evaluate(model, device, budgets, formats, calibrated)
    if not cands:
        raise BadInput(f"{device.name} has no runtime for {' or '.join(formats or names())} builds "
                       f"(it lists {', '.join(device.runtimes)})")
    winner = next((c for c in cands if c.fits), None)
    suggestions: tuple[str, ...] = ()
    if winner is None and advise:
        from edgellm.plan.advice import what_would_fit
        suggestions = tuple(what_would_fit(model, device, budgets, formats))
    judged = _with_verdicts(cands, winner)
    chosen = judged[cands.index(winner)] if winner is not None else None
    return Plan(model, device, budgets, judged, chosen, suggestions)
