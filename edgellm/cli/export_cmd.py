"""``edgellm export MODEL --device D``: a verified, self-contained bundle for the device."""

from __future__ import annotations

import argparse
from pathlib import Path

from edgellm.cli.common import fraction_arg, positive_float, positive_int, print_json, size_arg
from edgellm.cli.progress import StageLine
from edgellm import formats
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
    quants = formats.quant_names()
    p.add_argument("--format", choices=formats.names(), default="gguf", help="artifact format (default gguf)")
    p.add_argument("--quant", default="auto", choices=["auto", *dict.fromkeys(q for qs in quants.values() for q in qs)],
                   metavar="QUANT", help="auto (the planner's choice, default); "
                   + "; ".join(f"{name.upper()}: {', '.join(qs)}" for name, qs in quants.items()))
    p.add_argument("--block-size", type=int, choices=(16, 32, 64, 128), default=None,
                   help="ONNX int4: weights per quantization block (default 32)")
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
                   help="UTF-8 calibration text, at most 256 MiB (implies --calibrate; default: built-in text)")
    p.add_argument("--calib-windows", type=positive_int, default=16, metavar="N",
                   help="windows of 512 tokens to calibrate on (default 16)")
    p.add_argument("--calib-device", default="auto", metavar="{auto,cpu,cuda}",
                   help="where calibration runs: auto (default: a GPU when torch sees one), cpu or cuda; "
                        "the export itself streams on the CPU")
    p.add_argument("--max-kld", type=positive_float, metavar="X",
                   help="quality gate: export the smallest build whose measured mean KLD is <= X")
    p.add_argument("--max-ppl-increase", type=fraction_arg, metavar="P",
                   help="quality gate: perplexity at most P higher than the original (0.02 or 2%%)")
    p.add_argument("--allow-distill", action="store_true",
                   help="when no build of MODEL fits, distil the largest student that does (see `edgellm "
                        "distill`), then quantize, export and verify it")
    p.add_argument("--distill-steps", type=positive_int, default=500, metavar="N",
                   help="training steps for --allow-distill (default 500)")
    p.add_argument("--distill-device", default="auto", metavar="{auto,cpu,cuda}",
                   help="where --allow-distill trains: auto (default: a GPU when torch sees one), cpu or cuda")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=run)


def run(args) -> int:
    from edgellm.pipeline import BuildRequest, build_bundle

    calib_text = None
    if args.calib_data is not None:
        from edgellm.cli.eval_cmd import read_text
        calib_text = read_text(args.calib_data, 512 * args.calib_windows)
    req = BuildRequest(
        model=args.model, device=args.device, format=args.format, quant=args.quant, block_size=args.block_size,
        output=args.output, max_memory=args.max_memory, min_decode_tps=args.min_decode_tps, context=args.context,
        threads=args.threads, verify=not args.no_verify, force=args.force, allow_pickle=args.allow_pickle,
        trust_remote_code=args.trust_remote_code, calibrate=bool(args.calibrate or args.calib_data),
        calib_text=calib_text, calib_source=str(args.calib_data or ""), calib_windows=args.calib_windows,
        calib_device=args.calib_device, max_kld=args.max_kld, max_ppl_increase=args.max_ppl_increase,
        allow_distill=args.allow_distill,
        distill_steps=args.distill_steps, distill_device=args.distill_device)
    line = StageLine()
    try:
        built = build_bundle(req, say=line)
    finally:
        line.done()
    result, choice, prediction, gate = built.export, built.choice, built.prediction, built.gate
    if args.json:
        extra = {"quality_gate": {"limits": gate.describe(), "trials": [t.to_dict() for t in built.trials]}} if gate else {}
        print_json({"bundle": str(result.bundle), "artifact": str(result.artifact), "choice": choice.to_dict(),
                    "label": choice.label, "file_bytes": result.file_bytes, "tensor_types": result.tensor_types,
                    "prediction": prediction, "verification": result.verification,
                    "seconds": round(result.seconds, 2), **extra})
        return 0
    for t in built.trials:
        print(f"quality gate ({gate.describe()}): {t.label} {fmt_bytes(t.file_bytes)}: KLD {t.mean_kld:.5f}, "
              f"perplexity x{t.ppl_ratio:.4f} -> {'passes' if t.passed else 'fails'}")
    print(f"wrote {result.bundle}/ ({choice.label}, {fmt_bytes(result.file_bytes)}; predicted "
          f"{fmt_bytes(prediction['file_bytes'])}) in {result.seconds:.1f} s")
    v = result.verification
    if v:
        h = v["held_out"]
        print("verified against the original: tokenizer identical"
              + (", chat prompt identical" if v.get("chat_template") == "identical prompt ids" else "")
              + (f", greedy tokens match ({v['greedy_ties_within_float_tolerance']} ties within float tolerance)" if "greedy_tokens_checked" in v else "")
              + f"; held-out KLD {h['mean_kld']:.4f} (p99 {h['p99_kld']:.4f}), top-1 {h['top1_agreement']:.1%}, "
              f"perplexity x{h['ppl_ratio']:.4f}")
        if str(v.get("chat_template", "")).startswith("differs"):
            print(f"note: the chat prompt {v['chat_template']}")
        if v.get("measured_with"):
            print(f"note: measured with {v['measured_with']}")
    else:
        print("not verified (--no-verify)")
    print(f"run it:     edgellm run {result.bundle} -p \"Hello\"\nprofile it: edgellm profile {result.bundle}")
    return 0
