"""The pipeline as a library: ``build_bundle(request) -> result``.

load -> plan -> distil (when nothing fits and it is allowed) -> for each build tried, the export's
stages (exporters/stages.py: open, calibrate, write, tokenizer, verify, manifest; the format's
Writer does the format's own part) -> quality gate.  The ``export`` and ``demo`` commands and the
benchmarks call this; the CLI only parses and prints.  Progress reaches ``say`` as lines (str) and
as the stages' typed ``Progress`` events.  Needs the ``[export]`` extra.
"""

from __future__ import annotations

import dataclasses
import math
import importlib
import importlib.util
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from edgellm import devices, models
from edgellm.errors import BadInput, EdgeLLMError, EdgeLLMWarning, NothingFits
from edgellm.models.source import HUB_ID
from edgellm.models.families import family_of
from edgellm.plan import planner, report
from edgellm.formats.choice import BuildChoice
from edgellm.formats import FORMATS, format_for, resolved
from edgellm.formats import entry as format_named

Say = Callable[[object], None]           # a str, or an exporters.stages.Progress (str() is its line)


@dataclass(frozen=True)
class BuildRequest:
    """What to build.  ``quant`` "auto" takes the planner's choice for the device and budgets."""
    model: str                                  # a local folder or a hub id
    device: str                                 # a profile name or .toml path
    format: str = "gguf"                        # "gguf" or "onnx" (the NPU build when the plan says)
    quant: str = "auto"
    block_size: int | None = None               # ONNX int4
    output: Path | None = None
    max_memory: int | None = None
    min_decode_tps: float | None = None
    context: int | None = None
    threads: int | None = None
    verify: bool = True
    force: bool = False
    allow_pickle: bool = False
    trust_remote_code: bool = False
    calibrate: bool = False
    calib_text: str | None = None               # default: the built-in training text
    calib_source: str = ""
    calib_windows: int = 16
    calib_device: str = "auto"                  # compute.resolve: auto, cpu, cuda
    max_kld: float | None = None
    max_ppl_increase: float | None = None
    allow_distill: bool = False
    distill_steps: int = 500
    distill_device: str = "auto"


@dataclass(frozen=True)
class BuildResult:
    export: object                              # the exporter's ExportResult
    choice: BuildChoice
    prediction: dict
    trials: list = field(default_factory=list)  # quality-gate trials, when a gate was given
    gate: object | None = None
    plan: object | None = None                  # the plan the build was chosen from (planner.Plan)


def need_export_extra() -> None:
    missing = [m for m in ("torch", "transformers", "gguf", "llama_cpp", "onnx", "onnxruntime")
               if importlib.util.find_spec(m) is None]
    if missing:
        raise EdgeLLMError(f"export needs the host toolchain ({', '.join(missing)} missing): "
                           "pip install 'edgellm[export]'")


def public_name(model: str) -> str:
    """The model's name as a bundle records it: a hub id as is, a local folder by its own name
    (a bundle is shipped to other people: never the host's path)."""
    p = Path(model).expanduser()
    return p.resolve().name if p.exists() or not HUB_ID.match(model) else model


def writer_for(choice: BuildChoice):
    """The format's part of the export: a fresh instance of its registered Writer."""
    return resolved(format_for(choice).exporter)()


def _candidates(req: BuildRequest, model, device, calibrated: bool, plans: list | None = None
                ) -> list[tuple[BuildChoice, dict]]:
    """The builds to try, smallest predicted file first: the one ``quant`` names, or the plan's
    winner, or (with a gate) every build of the format that fits (one KV cache type each)."""
    fmt = req.format
    entry = next(f for f in FORMATS.values() if f.format == fmt)       # the format's CPU build
    names = [str(q) for q in entry.quants]
    if req.quant != "auto" and req.quant not in names:
        raise BadInput(f"--quant {req.quant} is not a {fmt} type; {fmt} offers {', '.join(names)}")
    if req.block_size is not None and not (entry.takes_block(req.quant) or (req.quant == "auto" and entry.takes_block())):
        raise BadInput("--block-size applies to ONNX int4 only")
    if req.quant != "auto" and (problem := entry.choice_problem(model, entry.choice(req.quant, device, req.block_size))):
        raise BadInput(problem)
    # a gate measures every build it tries: the plan offers it all that fit memory and speed
    gated = req.max_kld is not None or req.max_ppl_increase is not None
    budgets = planner.budgets_for(device, req.max_memory, req.min_decode_tps, req.context, model,
                                  float("inf") if gated else None)
    plan = planner.plan(model, device, budgets, formats=(fmt,), calibrated=calibrated)
    if plans is not None:
        plans.append(plan)

    def wanted(c: BuildChoice) -> bool:
        return req.block_size is None or c.block_size in (None, req.block_size)

    if req.quant != "auto":
        block = entry.choice(req.quant, device, req.block_size, calibrated).block_size
        named = [c for c in plan.candidates if c.choice.quant == req.quant and c.choice.block_size == block]
        # that type as it fits the budgets, with the runtime's exact f16 cache unless only a smaller
        # one fits (a q8_0 cache costs quality, and a near tie like SmolLM2's first answer token turns
        # on it); then the faster build, at equal speed the accelerator's (the plan's order)
        named.sort(key=lambda c: (not c.fits, not format_for(c.choice).exact_cache(c.choice), -c.estimate.decode_tps,
                                  c.estimate.unit == "cpu"))
        c = named[0] if named else None
        if c is None:                    # a block size the plan's table does not list
            c = planner.evaluate_choice(model, device, budgets, entry.choice(req.quant, device, block, calibrated))
        if c is None:
            raise BadInput(f"{device.name} has no runtime for {fmt} {req.quant}; see `edgellm devices show {device.name}`")
        if not c.fits:
            warnings.warn(f"{req.quant} misses {device.name}'s budgets: {'; '.join(c.failures)}", EdgeLLMWarning,
                          stacklevel=2)
        return [(c.choice, report.prediction(c, budgets.context))]
    fitting = [c for c in plan.candidates if c.fits and wanted(c.choice)]
    if not fitting:
        hint = f"; would fit: {plan.suggestions[0]}" if plan.suggestions else ""
        raise NothingFits(f"no {fmt.upper()} build of {model.name} fits {device.name}{hint}")
    if not (req.max_kld is not None or req.max_ppl_increase is not None):
        c = plan.winner if plan.winner in fitting else fitting[0]
        return [(c.choice, report.prediction(c, budgets.context))]
    seen, out = set(), []
    for c in sorted(fitting, key=lambda c: c.estimate.file_bytes):
        if c.choice.key not in seen:
            seen.add(c.choice.key)
            out.append((c.choice, report.prediction(c, budgets.context)))
    return out


def _distil_first(req: BuildRequest, folder: Path, model, device, say: Say):
    """The planner's student for the device, distilled from ``folder``: (its folder, its config)."""
    from edgellm.exporters.distill.train import DistillConfig
    from edgellm.exporters.distill.student import StudentRequest, distill_student
    from edgellm.plan.advice import student_that_fits

    budgets = planner.budgets_for(device, req.max_memory, req.min_decode_tps, req.context, model)
    s = student_that_fits(model, device, budgets, (req.format,))
    if s is None:
        raise NothingFits(f"no student of {model.name} fits {device.name} either")
    base = public_name(req.model)
    out = (req.output or Path(base)).with_name(f"{base}-student")
    sreq = StudentRequest(folder, out, DistillConfig(steps=req.distill_steps, device=req.distill_device),
                          layers=s.n_layers, hidden=s.hidden, force=req.force,
                          trust_remote_code=req.trust_remote_code)
    say(f"[distil] nothing fits {device.name}: distilling a {s.n_layers}-layer, hidden-{s.hidden} student into {out}")
    distill_student(sreq, say=lambda m: say(f"[distil] {m}"), progress=lambda p: say(
        f"[distil] training: step {p.step}/{p.steps}, loss {p.loss:.4f}, {p.tokens_per_s:,.0f} tok/s, "
        f"ETA {p.eta_s / 60:.1f} min"))
    return out, dataclasses.replace(models.load_config(str(out)), name=f"{base}-student")


def _calibration_preflight(model, calibration):
    import tempfile

    from edgellm.exporters.calibrate import preflight

    return preflight(model, min(calibration.context, model.max_context), calibration.windows, True, True, False,
                     calibration.device, Path(tempfile.gettempdir()), model.name)


def _calibration(req: BuildRequest):
    if not req.calibrate:
        return None
    from edgellm.exporters.calibrate import CalibrationData

    if req.calib_text is None:
        return CalibrationData(windows=req.calib_windows, device=req.calib_device)
    return CalibrationData(req.calib_text, req.calib_source, req.calib_windows, device=req.calib_device)


def _weights_fit_config(folder: Path, model) -> None:
    """The checkpoint holds about the parameters config.json describes, from the safetensors
    headers alone: every size this export plans (disk, memory, calibration) comes from the config,
    and a config that describes another model (4,096 experts beside a checkpoint of 8) would
    otherwise be refused for want of thousands of GiB, not for what it is.  The writers then match
    every tensor by name and shape."""
    from edgellm.exporters.io.checkpoint import open_checkpoint

    qc = model.raw.get("quantization_config")
    if qc is not None:
        method = qc.get("quant_method") if isinstance(qc, dict) else None
        raise BadInput(f"{model.name}: its weights are already quantized ({str(method or 'quantization_config')[:40]}); "
                       "edgellm builds from the original float32/float16/bfloat16 weights: export from the "
                       "unquantized model")
    if not any(Path(folder).glob("*.safetensors")):
        return                              # pickles: loaded once, by the writer, only if allowed
    ckpt = open_checkpoint(folder)
    held = sum(math.prod(ckpt.info(n).shape) for n in ckpt.names())
    described = model.n_params
    if described > 2 * held + (1 << 20):    # (tied heads, buffers and rounding: far inside 2x)
        raise BadInput(f"{model.name}: config.json describes {described:,} parameters, but the checkpoint holds "
                       f"{held:,}: they do not belong to the same model")


def build_bundle(req: BuildRequest, say: Say = lambda s: None) -> BuildResult:
    """Plan, (distil), export, verify and package ``req.model`` for ``req.device``."""
    need_export_extra()
    from edgellm.exporters.compute import resolve
    from edgellm.exporters.stages import ExportRequest, run_export
    from edgellm.exporters.verify.quality_gate import Gate, smallest_passing
    from edgellm.exporters.io.weights_source import weights_folder
    from edgellm.runtime.profiling import default_threads

    device = devices.find(req.device)
    folder = weights_folder(req.model)
    model = dataclasses.replace(models.load_config(str(folder)), name=public_name(req.model))
    _weights_fit_config(folder, model)
    calibration = _calibration(req)
    gate = Gate(req.max_kld, req.max_ppl_increase)
    if gate and not req.verify:
        raise BadInput("--max-kld/--max-ppl-increase measure every build they try; they cannot skip verification")
    if calibration is not None and req.quant != "auto":
        if not any(f.format == req.format and f.calibratable(req.quant) for f in FORMATS.values()):
            raise BadInput(f"--calibrate applies to GGUF types below F16 and ONNX int4; not {req.format} {req.quant}")
    if calibration is not None and (why := family_of(model).calibration_problem(format_named(req.format))):
        raise BadInput(why)
    if calibration is not None:                 # where it runs, and whether it fits: before any work
        calibration = dataclasses.replace(calibration, device=resolve(req.calib_device, "--calib-device"))
    if req.allow_distill:
        resolve(req.distill_device, "--distill-device")
    plans: list = []
    try:
        choices = _candidates(req, model, device, calibration is not None, plans)
    except NothingFits:
        if not req.allow_distill:
            raise
        folder, model = _distil_first(req, folder, model, device, say)
        choices = _candidates(req, model, device, calibration is not None, plans)
    choice = choices[0][0]
    label = "gated" if gate and len(choices) > 1 else choice.slug   # a gate's build is known once measured
    out = req.output or Path(f"{public_name(req.model)}-{label}-{device.name}")
    if out.resolve() == folder.resolve():
        raise BadInput(f"{out}: the bundle cannot be written into the model folder")
    predictions = dict(choices)
    if calibration is not None and any(c.calibrated for c, _ in choices):
        calibration.check(folder, min(calibration.context, model.max_context), req.trust_remote_code)
        need = _calibration_preflight(model, calibration)
        for c in predictions:
            predictions[c] = {**predictions[c], "calibration": need.to_dict()}
        getattr(say, "note", say)(f"calibration on {calibration.device} needs {need.describe()}")
    if req.verify:                              # verification's peak, before any work (vocabulary-sized logits)
        from edgellm.exporters.verify.memory import preflight as verification_preflight

        for c in predictions:
            need = verification_preflight(model, int(predictions[c].get("file_bytes") or 0), model.name,
                                          scoring_rows=format_for(c).scoring_rows)
            predictions[c] = {**predictions[c], "verification_ram_bytes": need}
    source_kind = "local folder" if Path(req.model).expanduser().exists() else "hub"

    def export(c: BuildChoice, to: Path, force: bool):
        return run_export(writer_for(c), ExportRequest(
            model_dir=folder, model=model, choice=c, out=to, device=device.name,
            prediction=predictions[c], verify=req.verify, threads=req.threads or default_threads(),
            allow_pickle=req.allow_pickle, trust_remote_code=req.trust_remote_code, force=force,
            calibration=calibration, source_kind=source_kind), say)

    trials: list = []
    if gate:
        result, choice, trials = smallest_passing([c for c, _ in choices], lambda c, to: export(c, to, True),
                                                  out, req.force, gate, say=say)
    else:
        result = export(choice, out, req.force)
        held = (result.verification or {}).get("held_out") or {}
        budget = planner.DEFAULT_MAX_KLD
        if isinstance(held.get("mean_kld"), float) and held["mean_kld"] > budget:
            warnings.warn(f"{choice.label} measured a mean KLD of {held['mean_kld']:.4f} against the original, over "
                          f"the default quality budget {budget:g} (predicted {predictions[choice].get('mean_kld', 'n/a')}); "
                          "a larger type, --calibrate, or --max-kld to choose the smallest build that measures within "
                          "a budget", EdgeLLMWarning, stacklevel=2)
    return BuildResult(result, choice, predictions[choice], trials, gate if gate else None, plans[-1])
