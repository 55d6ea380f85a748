"""``edgellm export MODEL --device D``: a verified, self-contained bundle for the device."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from edgellm import devices, models
from edgellm.cli.common import fraction_arg, positive_float, positive_int, print_json, size_arg
from edgellm.cli.progress import StageLine
from edgellm.errors import BadInput, EdgeLLMError, NothingFits
from edgellm.plan import planner, report
from edgellm.plan.choice import BuildChoice, calibratable
from edgellm.plan.planner import GGUF_QUANTS, ONNX_QUANTS
from edgellm.units import fmt_bytes

HELP = """Convert MODEL for a device, quantize it, check it against the original model, and write
one folder holding the model file(s), the tokenizer and a manifest (source, device, plan, sha256
of every file, verification numbers, tool versions).

--format gguf (default): llama.cpp's file, quantized with llama.cpp's own quantizer; --quant is a
  GGUF type (Q4_K_M, Q8_0, ...).
--format onnx: one ONNX Runtime graph of fused contrib ops (GroupQueryAttention, MatMulNBits,
  SkipSimplifiedLayerNormalization) with the KV cache as inputs/outputs; --quant fp32, fp16,
  int8 (dynamic quantization) or int4 (MatMulNBits blocks of --block-size weights).  When the
  plan runs the build on the device's NPU (QNN), int8/int4 export a fixed-shape static QDQ model
  instead, checked against the QNN provider (and its HTP simulator when onnxruntime-qnn is
  installed).
--quant auto takes the planner's choice for the device and budgets (see `edgellm plan`).

--calibrate quantizes with the model's own activations on calibration text (--calib-data FILE, or
  by default Python standard-library source that verification never scores on).  GGUF: each
  tensor's type chosen by its measured sensitivity so the file keeps the --quant type's size
  (types mixed per tensor, as llama-quantize --tensor-type writes), rounded by ggml's quantizers
  with an importance matrix and GPTQ error compensation between column blocks.  ONNX int4: GPTQ
  into the same MatMulNBits blocks.  Costs a few forward/backward passes of the model on the host.
--allow-distill: when nothing fits, the planner's proposed student (pruned from MODEL, distilled on
  the built-in text for --distill-steps) is made first, written beside the bundle as NAME-student/,
  and exported in its place.
--max-kld X / --max-ppl-increase P export the SMALLEST build that fits the device and measures
  within the limit (mean KL divergence against the original; perplexity increase as 0.02 or 2%),
  trying candidates by size with a binary search; nothing fits -> exit 3 with what each measured.

Verification compares the runtime's logits with the original model's in transformers:
unquantized files must match to float tolerance with identical greedy continuations; quantized
files report KL divergence, top-1 agreement and perplexity change.  --no-verify skips it.

examples:
  edgellm export ./my-model --device rpi5-8gb
  edgellm export Qwen/Qwen2.5-0.5B-Instruct --device rpi5 --quant Q4_K_M -o qwen-rpi5
  edgellm export ./my-model --device laptop --format onnx --quant int4 --block-size 32
  edgellm export ./my-model --device rpi5 --quant Q4_K_M --calibrate --calib-data notes.txt
  edgellm export ./my-model --device rpi5 --calibrate --max-kld 0.01     smallest build within 0.01
"""


def add_parser(sub) -> None:
    p = sub.add_parser("export", help="export a verified GGUF bundle for a device", description=HELP,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", metavar="MODEL", help="local model folder or hub id")
    p.add_argument("--device", "-d", required=True, help="device profile name or .toml file")
    p.add_argument("--format", choices=("gguf", "onnx"), default="gguf", help="artifact format (default gguf)")
    p.add_argument("--quant", default="auto", choices=("auto",) + GGUF_QUANTS + ONNX_QUANTS, metavar="QUANT",
                   help=f"auto (the planner's choice, default); GGUF: {', '.join(GGUF_QUANTS)}; "
                        f"ONNX: {', '.join(ONNX_QUANTS)}")
    p.add_argument("--block-size", type=int, choices=(16, 32, 64, 128), default=None,
                   help="ONNX int4/int8: weights per quantization block (default 32)")
    p.add_argument("-o", "--output", type=Path, help="bundle folder (default: ./NAME-FORMAT-QUANT-DEVICE)")
    p.add_argument("--max-memory", type=size_arg, metavar="SIZE", help="memory budget for --quant auto")
    p.add_argument("--min-decode-tps", type=positive_float, metavar="TOK_S", help="speed budget for --quant auto")
    p.add_argument("--context", type=positive_int, metavar="TOKENS", help="context for the plan")
    p.add_argument("--threads", type=positive_int, default=None, help="threads for quantization and verification")
    p.add_argument("--no-verify", action="store_true", help="skip verification against the original model")
    p.add_argument("--force", action="store_true", help="replace an existing bundle folder")
    p.add_argument("--allow-pickle", action="store_true",
                   help="accept pickle checkpoints (.bin/.pt), loaded with torch.load(weights_only=True)")
    p.add_argument("--trust-remote-code", action="store_true",
                   help="let transformers run code shipped with the model during verification")
    p.add_argument("--calibrate", action="store_true",
                   help="data-aware quantization on calibration text (GGUF types below F16, ONNX int4)")
    p.add_argument("--calib-data", type=Path, metavar="FILE",
                   help="UTF-8 calibration text (implies --calibrate; default: built-in text)")
    p.add_argument("--calib-windows", type=positive_int, default=16, metavar="N",
                   help="windows of 512 tokens to calibrate on (default 16)")
    p.add_argument("--max-kld", type=positive_float, metavar="X",
                   help="quality gate: export the smallest build whose measured mean KLD is <= X")
    p.add_argument("--max-ppl-increase", type=fraction_arg, metavar="P",
                   help="quality gate: perplexity at most P higher than the original (0.02 or 2%%)")
    p.add_argument("--allow-distill", action="store_true",
                   help="when no build of MODEL fits, distil the largest student that does (see `edgellm "
                        "distill`), then quantize, export and verify it")
    p.add_argument("--distill-steps", type=positive_int, default=500, metavar="N",
                   help="training steps for --allow-distill (default 500)")
    p.add_argument("--distill-device", default="cpu", help="cpu (default) or cuda, for --allow-distill")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=run)


def _choose(args, model, device, calibrated: bool = False) -> tuple[BuildChoice, dict]:
    fmt = args.format
    if args.quant != "auto" and (args.quant in GGUF_QUANTS) != (fmt == "gguf"):
        raise BadInput(f"--quant {args.quant} is not a {fmt} type; {fmt} offers "
                       f"{', '.join(GGUF_QUANTS if fmt == 'gguf' else ONNX_QUANTS)}")
    if args.block_size is not None and not (fmt == "onnx" and args.quant in ("int4", "int8", "auto")):
        raise BadInput("--block-size applies to ONNX int4/int8 only")
    budgets = planner.budgets_for(device, args.max_memory, args.min_decode_tps, args.context, model)
    plan = planner.plan(model, device, budgets, formats=(fmt,), calibrated=calibrated)
    if args.quant == "auto":
        fitting = [c for c in plan.candidates if c.fits and (args.block_size is None or
                                                              c.choice.block_size in (None, args.block_size))]
        if plan.winner is None or not fitting:
            hint = f"; would fit: {plan.suggestions[0]}" if plan.suggestions else ""
            raise NothingFits(f"no {fmt.upper()} build of {model.name} fits {device.name}{hint}")
        c = plan.winner if plan.winner in fitting else fitting[0]
    else:
        block = (args.block_size or 32) if args.quant in ("int4", "int8") else None
        c = next((c for c in plan.candidates if c.choice.quant == args.quant
                  and c.choice.block_size == block), None)
        if c is None and fmt == "onnx":    # a block size the plan's table does not list
            c = planner.evaluate_choice(model, device, budgets, BuildChoice("onnx", args.quant, "f32", block,
                                                                            calibrated and args.quant == "int4"))
        if c is None:                      # a build the planner has no runtime for on this device
            raise BadInput(f"{device.name} has no runtime for {fmt} {args.quant}; see `edgellm devices show {device.name}`")
        if not c.fits:
            print(f"edgellm: warning: {args.quant} misses {device.name}'s budgets: {'; '.join(c.failures)}",
                  file=sys.stderr)
    return c.choice, report.prediction(c, budgets.context)


def _gate_choices(args, model, device, calibrated: bool) -> list[tuple[BuildChoice, dict]]:
    """The builds a quality gate may pick from, smallest predicted file first: the one --quant names,
    or every build of the format that fits the device (one KV cache type each: the file is the same)."""
    if args.quant != "auto":
        return [_choose(args, model, device, calibrated)]
    budgets = planner.budgets_for(device, args.max_memory, args.min_decode_tps, args.context, model)
    plan = planner.plan(model, device, budgets, formats=(args.format,), calibrated=calibrated)
    seen, out = set(), []
    for c in sorted((c for c in plan.candidates if c.fits), key=lambda c: c.estimate.file_bytes):
        key = (c.choice.quant, c.choice.block_size)
        if key not in seen and (args.block_size is None or c.choice.block_size in (None, args.block_size)):
            seen.add(key)
            out.append((c.choice, report.prediction(c, budgets.context)))
    if not out:
        hint = f"; would fit: {plan.suggestions[0]}" if plan.suggestions else ""
        raise NothingFits(f"no {args.format.upper()} build of {model.name} fits {device.name}{hint}")
    return out


def int8_levels(device) -> int:
    """ONNX int8 weight range for the device: 7-bit on x86 CPUs without VNNI, whose uint8 x int8
    kernel can overflow 16-bit pair sums with full 8-bit weights (ONNX Runtime's reduce_range)."""
    isa = set(device.cpu.isa)
    x86 = bool(isa & {"sse4_2", "avx", "avx2", "avx512f"})
    return 63 if x86 and not isa & {"avx_vnni", "avx512_vnni", "amx"} else 127


def _need_export_extra() -> None:
    import importlib.util

    missing = [m for m in ("torch", "transformers", "gguf", "llama_cpp", "onnx", "onnxruntime")
               if importlib.util.find_spec(m) is None]
    if missing:
        raise EdgeLLMError(f"export needs the host toolchain ({', '.join(missing)} missing): "
                           "pip install 'edgellm[export]'")


def _distil_first(args, folder: Path, model, device, line):
    """The planner's student for the device, distilled from ``folder``: (its folder, its config)."""
    from edgellm.exporters.distill import DistillConfig
    from edgellm.exporters.student import StudentRequest, distill_student
    from edgellm.plan.advice import student_that_fits

    budgets = planner.budgets_for(device, args.max_memory, args.min_decode_tps, args.context, model)
    s = student_that_fits(model, device, budgets, (args.format,))
    if s is None:
        raise NothingFits(f"no student of {model.name} fits {device.name} either")
    out = (args.output or Path(Path(args.model).name)).with_name(f"{Path(args.model).name}-student")
    req = StudentRequest(folder, out, DistillConfig(steps=args.distill_steps, device=args.distill_device),
                         layers=s.n_layers, hidden=s.hidden, force=args.force,
                         trust_remote_code=args.trust_remote_code)
    line(f"[distil] nothing fits {device.name}: distilling a {s.n_layers}-layer, hidden-{s.hidden} student into {out}")
    distill_student(req, say=lambda m: line(f"[distil] {m}"), progress=lambda p: line(
        f"[distil] training: step {p.step}/{p.steps}, loss {p.loss:.4f}, {p.tokens_per_s:,.0f} tok/s, ETA {p.eta_s / 60:.1f} min"))
    student = dataclasses.replace(models.load_config(str(out)), name=str(out))
    return out, student


def _calibration(args):
    if not (args.calibrate or args.calib_data):
        return None
    from edgellm.cli.eval_cmd import read_text
    from edgellm.exporters.calibrate import CalibrationData

    if args.calib_data is None:
        return CalibrationData(windows=args.calib_windows)
    return CalibrationData(read_text(args.calib_data), str(args.calib_data), args.calib_windows)


def run(args) -> int:
    _need_export_extra()
    from edgellm.exporters.export_gguf import ExportRequest, export_gguf
    from edgellm.exporters.export_onnx import export_onnx
    from edgellm.exporters.quality_gate import Gate, smallest_passing
    from edgellm.exporters.weights_source import weights_folder
    from edgellm.runtime.llamacpp import default_threads

    device = devices.find(args.device)
    folder = weights_folder(args.model)
    model = models.load_config(str(folder))
    model = dataclasses.replace(model, name=args.model)
    calibration = _calibration(args)
    gate = Gate(args.max_kld, args.max_ppl_increase)
    if gate and args.no_verify:
        raise BadInput("--max-kld/--max-ppl-increase measure every build they try; they cannot skip verification")
    if calibration is not None and args.quant != "auto" and not calibratable(args.format, args.quant):
        raise BadInput(f"--calibrate applies to GGUF types below F16 and ONNX int4; not {args.format} {args.quant}")
    line = StageLine()
    try:
        choices = _gate_choices(args, model, device, calibration is not None) if gate else \
            [_choose(args, model, device, calibration is not None)]
    except NothingFits:
        if not args.allow_distill:
            raise
        try:
            folder, model = _distil_first(args, folder, model, device, line)
        finally:
            line.done()
        choices = _gate_choices(args, model, device, calibration is not None) if gate else \
            [_choose(args, model, device, calibration is not None)]
    choice = choices[0][0]
    label = choice.quant if choice.block_size is None else f"{choice.quant}-b{choice.block_size}"
    if gate and len(choices) > 1:
        label = "gated"                      # the build is known only once the gate has measured
    out = args.output or Path(f"{Path(args.model).name}-{choice.format}-{label}{'-cal' if choice.calibrated else ''}"
                              f"-{device.name}")
    if out.resolve() == folder.resolve():
        raise BadInput(f"{out}: the bundle cannot be written into the model folder")
    predictions = {c: p for c, p in choices}

    def export(c: BuildChoice, to: Path, force: bool):
        exporter = export_onnx if c.format == "onnx" else export_gguf
        return exporter(ExportRequest(
            model_dir=folder, model=model, choice=c, out=to, device=device.name,
            prediction=predictions[c], verify=not args.no_verify, threads=args.threads or default_threads(),
            allow_pickle=args.allow_pickle, trust_remote_code=args.trust_remote_code, force=force,
            int8_weight_levels=int8_levels(device), calibration=calibration), stage=line)

    trials = []
    try:
        if gate:
            result, choice, trials = smallest_passing([c for c, _ in choices], lambda c, to: export(c, to, True),
                                                      out, args.force, gate, say=line)
        else:
            result = export(choice, out, args.force)
    finally:
        line.done()
    prediction = predictions[choice]
    if args.json:
        extra = {"quality_gate": {"limits": gate.describe(), "trials": [t.to_dict() for t in trials]}} if gate else {}
        print_json({"bundle": str(result.bundle), "artifact": str(result.artifact), "choice": choice.to_dict(),
                    "file_bytes": result.file_bytes, "tensor_types": result.tensor_types,
                    "prediction": prediction, "verification": result.verification,
                    "seconds": round(result.seconds, 2), **extra})
        return 0
    for t in trials:
        print(f"quality gate ({gate.describe()}): {t.label} {fmt_bytes(t.file_bytes)}: KLD {t.mean_kld:.5f}, "
              f"perplexity x{t.ppl_ratio:.4f} -> {'passes' if t.passed else 'fails'}")
    print(f"wrote {result.bundle}/ ({choice.label}, {fmt_bytes(result.file_bytes)}; predicted "
          f"{fmt_bytes(prediction['file_bytes'])}) in {result.seconds:.1f} s")
    v = result.verification
    if v:
        h = v["held_out"]
        print("verified against the original: tokenizer identical"
              + (f", greedy tokens match ({v['greedy_ties_within_float_tolerance']} ties within float tolerance)" if "greedy_tokens_checked" in v else "")
              + f"; held-out KLD {h['mean_kld']:.4f} (p99 {h['p99_kld']:.4f}), top-1 {h['top1_agreement']:.1%}, "
              f"perplexity x{h['ppl_ratio']:.4f}")
    else:
        print("not verified (--no-verify)")
    print(f"run it:     edgellm run {result.bundle} -p \"Hello\"\nprofile it: edgellm profile {result.bundle}")
    return 0
