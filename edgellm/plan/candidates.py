"""The candidate builds of a model for a device, each estimated and checked against the budgets:
what the planner ranks and the advice searches.  Below both: imports neither."""

from __future__ import annotations

from dataclasses import dataclass, replace

from edgellm.devices.schema import DeviceProfile
from edgellm.errors import BadInput
from edgellm.models.config import ModelConfig
from edgellm.formats import quality as quality_table
from edgellm.formats.choice import BuildChoice, GgufQuant
from edgellm.plan.estimate import Estimate, estimate
from edgellm.formats import BuildFormat, expected_quality, formats_of
from edgellm.formats.gguf_recipes import RECIPES
from edgellm.units import fmt_bytes

# Below this mean KLD a build is treated as lossless: among such builds the fastest wins, since
# no user can tell them apart.  On the quality model's scale (real models, formats/quality.py):
# llama.cpp's Q6_K of Llama-3-8B measures 0.0049 and Q8_0 0.0008; SmolLM2-135M's Q8_0 0.0040.
LOSSLESS_KLD = 0.005
# The quality budget when the user gives none: a build predicted to lose more (mean KLD against the
# original) is not chosen.  0.05 sits between llama.cpp's Q4_K_M on Llama-3-8B (0.031) and the
# 0.061 at which SmolLM2-135M-Instruct's plain Q4_K_M already answered "What is the capital of
# France?" with rambling French; its Q3_K_M (0.10) and Q2_K (0.45) change answers visibly.
DEFAULT_MAX_KLD = 0.05
assert {str(q) for q in GgufQuant} <= set(RECIPES)


@dataclass(frozen=True)
class Budgets:
    max_memory: int
    min_decode_tps: float
    context: int
    max_kld: float = DEFAULT_MAX_KLD        # predicted mean KLD a chosen build may lose


@dataclass(frozen=True)
class Candidate:
    estimate: Estimate
    quality: quality_table.Quality
    failures: tuple[str, ...]           # budgets it misses; empty when it fits
    verdict: str = ""

    @property
    def choice(self) -> BuildChoice:
        return self.estimate.choice

    @property
    def fits(self) -> bool:
        return not self.failures


def buildable_formats(model: ModelConfig, formats: tuple[str, ...]) -> list[BuildFormat]:
    """The formats among ``formats`` that edgellm can build for this model's family (and this
    config of it): the planner never offers a build the exporter would refuse."""
    return [f for f in formats_of(formats) if f.model_problem(model) is None]


def candidate_choices(model: ModelConfig, device: DeviceProfile, formats: tuple[str, ...],
                      calibrated: bool = False) -> list[BuildChoice]:
    """Every build of ``formats`` that can be made for ``model`` and run on ``device``; with
    ``calibrated`` the quantized ones are the calibrated kind."""
    from edgellm.models.families.registry import family_of

    out = []
    for f in buildable_formats(model, formats):
        # a format the family cannot calibrate offers none of its quantized builds: not silently uncalibrated ones
        uncalibratable = calibrated and family_of(model).calibration_problem(f) is not None
        for c in f.candidates(device):
            if f.choice_problem(model, c) is not None or (uncalibratable and f.calibratable(c.quant)):
                continue
            out.append(replace(c, calibrated=True) if calibrated and f.calibratable(c.quant) else c)
    return out


def budgets_for(device: DeviceProfile, max_memory: int | None, min_decode_tps: float | None,
                context: int | None, model: ModelConfig | None = None, max_kld: float | None = None) -> Budgets:
    """The device's default budgets, overridden by the user's flags.  A default context longer
    than the model supports is cut to the model's; an explicit one is checked by ``plan``."""
    if context is None:
        context = device.budgets.context
        if model is not None and model.max_context:
            context = min(context, model.max_context)
    mem = device.memory_budget if max_memory is None else max_memory
    if mem > device.memory.ram:
        raise BadInput(f"--max-memory {fmt_bytes(mem)} is more than {device.name}'s "
                       f"{fmt_bytes(device.memory.ram)} of RAM")
    return Budgets(max_memory=mem,
                   min_decode_tps=device.budgets.min_decode_tps if min_decode_tps is None else min_decode_tps,
                   context=context, max_kld=DEFAULT_MAX_KLD if max_kld is None else max_kld)


def failures(e: Estimate, b: Budgets, quality=None) -> tuple[str, ...]:
    out = []
    if quality is not None and quality.kld > b.max_kld:
        out.append(f"loses {'~' if quality.approximate else ''}{quality.kld:.3f} KLD > {b.max_kld:g} budget")
    if e.memory.total > b.max_memory:
        out.append(f"needs {fmt_bytes(e.memory.total)} > {fmt_bytes(b.max_memory)} budget")
    if e.decode_tps < b.min_decode_tps:
        out.append(f"decode {e.decode_tps:.1f} < {b.min_decode_tps:g} tok/s")
    return tuple(out)


def evaluate(model: ModelConfig, device: DeviceProfile, budgets: Budgets,
             formats: tuple[str, ...] | None = None, calibrated: bool = False) -> list[Candidate]:
    """Every candidate the device can run, predicted and checked, best quality first."""
    prefs = {f: i for i, f in enumerate(device.preferred_formats)}
    out = []
    for choice in candidate_choices(model, device, formats, calibrated):
        e = estimate(model, device, choice, budgets.context)
        if e is not None:
            q = expected_quality(choice, model)
            out.append(Candidate(e, q, failures(e, budgets, q)))
    # equal speed: the accelerator's build first, as it frees the CPU
    out.sort(key=lambda c: (quality_rank(c), prefs.get(c.choice.format, 9), -c.estimate.decode_tps,
                            c.estimate.unit == "cpu", c.estimate.file_bytes))
    return out


def evaluate_choice(model: ModelConfig, device: DeviceProfile, budgets: Budgets, choice: BuildChoice) -> Candidate | None:
    """One given build (e.g. an ONNX block size the table does not list); None when no runtime."""
    e = estimate(model, device, choice, budgets.context)
    if e is None:
        return None
    q = expected_quality(choice, model)
    return Candidate(e, q, failures(e, budgets, q))


def quality_rank(c: Candidate) -> float:
    return 0.0 if c.quality.kld < LOSSLESS_KLD else c.quality.kld
