"""When nothing fits: what would.  A shorter context, a smaller (distilled) student of the same
width, or another known device; each checked with the same predictions as the plan itself."""

from __future__ import annotations

import dataclasses
import math

from edgellm.devices.catalog import all_profiles
from edgellm.devices.schema import DeviceProfile
from edgellm.models.families import family_of, student_config
from edgellm.models.config import ModelConfig
from edgellm.plan.estimate import estimate
from edgellm.plan.candidates import Budgets, buildable_formats, evaluate, failures
from edgellm.units import fmt_bytes, fmt_count

MIN_CONTEXT = 256


def _first_fit(model, device, budgets, formats):
    return next((c for c in evaluate(model, device, budgets, formats) if c.fits), None)


def _anything_fits(model, device, budgets, formats) -> bool:
    """Whether a build fits every budget.  The leanest build of each format is asked first: if
    none of them fits memory and speed, no build does (the bisections below mostly end there);
    otherwise the full evaluation says whether one also meets the quality budget."""
    for f in buildable_formats(model, formats):
        for choice in f.leanest(device):
            e = estimate(model, device, choice, budgets.context)
            if e is not None and not failures(e, budgets):
                return _first_fit(model, device, budgets, formats) is not None
    return False


WIDTHS = (1.0, 0.75, 0.5, 0.375, 0.25, 0.125)   # widest first: see smaller_student


def shorter_context(model, device, budgets, formats) -> str | None:
    ctx = budgets.context // 2
    while ctx >= MIN_CONTEXT:
        shorter = dataclasses.replace(budgets, context=ctx)
        c = _anything_fits(model, device, shorter, formats) and _first_fit(model, device, shorter, formats)
        if c:
            return (f"a shorter context: --context {ctx} fits {c.choice.label} "
                    f"({fmt_bytes(c.estimate.memory.total)}, {c.estimate.decode_tps:.1f} tok/s)")
        ctx //= 2
    return None


def student_that_fits(model, device, budgets, formats) -> ModelConfig | None:
    """The largest pruned student that fits: for each width, the most layers that fit (found by
    bisection), never shallower relative to the teacher than half its width share, so that
    students keep a sensible shape; the student with the most parameters wins."""
    if family_of(model).build_problem("distill") is not None:
        return None                       # edgellm distill cannot make a student of this family
    best = None
    for width in WIDTHS:
        if best and student_config(model, model.n_layers, width).n_params <= best.n_params:
            break        # narrower widths only get smaller: no student there can win
        lo = max(1, math.ceil(model.n_layers * width / 2))
        hi = model.n_layers if width < 1 else model.n_layers - 1
        while lo <= hi:
            mid = (lo + hi) // 2
            student = student_config(model, mid, width)
            if _anything_fits(student, device, budgets, formats):
                if best is None or student.n_params > best.n_params:
                    best = student
                lo = mid + 1
            else:
                hi = mid - 1
    return best


def smaller_student(model, device, budgets, formats) -> str | None:
    s = student_that_fits(model, device, budgets, formats)
    if s is None:
        return None
    c = _first_fit(s, device, budgets, formats)
    if c is None:
        return None
    return (f"a distilled student of about {fmt_count(s.n_params)} parameters ({s.n_layers} of "
            f"{model.n_layers} layers, hidden {s.hidden} of {model.hidden}) as {c.choice.label}: "
            f"{fmt_bytes(c.estimate.memory.total)}, {c.estimate.decode_tps:.1f} tok/s, "
            f"{_kld(c)} KLD from its quantization (distillation's own loss is measured after training) "
            f"(edgellm distill MODEL --layers {s.n_layers} --hidden {s.hidden}, or export --allow-distill)")


def _kld(c) -> str:
    return f"{'~' if c.quality.approximate else ''}{c.quality.kld:.3f}"


def lossier_build(model, device, budgets, formats) -> str | None:
    """The same model at fewer bits: the best build that fits memory and speed but not the quality
    budget, with what it is predicted to lose."""
    relaxed = dataclasses.replace(budgets, max_kld=math.inf)
    c = _first_fit(model, device, relaxed, formats)
    if c is None:
        return None
    return (f"the same model at fewer bits: {c.choice.label} fits ({fmt_bytes(c.estimate.memory.total)}, "
            f"{c.estimate.decode_tps:.1f} tok/s) but loses {_kld(c)} KLD, over the {budgets.max_kld:g} quality "
            f"budget; --max-kld {_ceil2(c.quality.kld * c.quality.spread)} takes it")


def _ceil2(x: float) -> str:
    """``x`` rounded up to two significant digits, as a flag value."""
    if x <= 0:
        return "0"
    e = math.floor(math.log10(x)) - 1
    return f"{math.ceil(x / 10 ** e) * 10 ** e:.{max(0, -e)}f}"


def bigger_devices(model, device, budgets, formats, limit: int = 3) -> str | None:
    """Known devices with more RAM or faster memory where a build fits within their own memory
    budget: least RAM first, then the best quality."""
    fits = []
    for other in all_profiles():
        bigger = (other.memory.ram > device.memory.ram
                  or other.memory.effective_bandwidth > device.memory.effective_bandwidth)
        if other.name == device.name or not bigger:
            continue
        b = dataclasses.replace(budgets, max_memory=other.memory_budget)
        c = _anything_fits(model, other, b, formats) and _first_fit(model, other, b, formats)
        if c:
            fits.append((other.memory.ram, c.quality.kld, other.name, c.choice.label))
    if not fits:
        return None
    fits.sort()
    names = ", ".join(f"{name} ({label})" for _, _, name, label in fits[:limit])
    return f"a bigger device: {names}"


def more_memory(model, device, budgets, formats) -> str | None:
    """A memory budget set below the device's own (``--max-memory``): the least that a build
    meeting every other budget needs on this device, rounded up to whole MiB."""
    if budgets.max_memory >= device.memory_budget:
        return None
    roomy = dataclasses.replace(budgets, max_memory=device.memory_budget)
    fits = [c for c in evaluate(model, device, roomy, formats) if c.fits]
    if not fits:
        return None
    c = min(fits, key=lambda c: c.estimate.memory.total)
    return f"a larger memory budget: --max-memory {math.ceil(c.estimate.memory.total / 2**20)}MiB fits {c.choice.label}"


def what_would_fit(model: ModelConfig, device: DeviceProfile, budgets: Budgets,
                   formats: tuple[str, ...]) -> list[str]:
    found = [s(model, device, budgets, formats)
             for s in (more_memory, shorter_context, smaller_student, lossier_build, bigger_devices)]
    return [s for s in found if s]
