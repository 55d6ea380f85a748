"""``edgellm eval TARGET``: perplexity, and KL divergence / top-1 agreement against a reference."""

from __future__ import annotations

import argparse
from pathlib import Path

from edgellm.cli.common import positive_int, print_json
from edgellm.cli.progress import StageLine

HELP = """Score TARGET on text: perplexity over non-overlapping windows of --context tokens and, with
--reference, mean and 99th-percentile KL divergence (reference || target) and top-1 agreement,
position by position.  TARGET and --reference may each be a Hugging Face folder or hub id, an
edgellm bundle (GGUF or ONNX), or a .gguf/.onnx file; they must share a vocabulary.

Without --data the text is the project's default held-out text: the tail of Python's standard
library, present on every machine with Python (edgellm's demo models never train on it).

examples:
  edgellm eval ./qwen-Q4_K_M-rpi5 --reference ./qwen          how much did quantization lose?
  edgellm eval ./my-model --data notes.txt --context 1024 --json
"""


def add_parser(sub) -> None:
    p = sub.add_parser("eval", help="perplexity and KL divergence of a model, bundle or file",
                       description=HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("target", metavar="TARGET", help="HF folder or hub id, bundle folder, .gguf or .onnx")
    p.add_argument("--reference", metavar="MODEL", help="compare against this model (same vocabulary)")
    p.add_argument("--data", type=Path, metavar="FILE", help="UTF-8 text to score, at most 256 MiB (default: held-out text)")
    p.add_argument("--context", type=positive_int, default=512, help="tokens per window (default 512)")
    p.add_argument("--windows", type=positive_int, default=8, help="at most this many windows (default 8)")
    p.add_argument("--threads", type=positive_int, default=None, help="threads for the runtimes")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=run)


def _text(path: Path | None, tokens: int) -> str:
    if path is None:
        from edgellm.textdata import held_out_text
        return held_out_text()
    return read_text(path, tokens)


def read_text(path: Path, tokens: int | None = None) -> str:
    """--data / --calib-data: UTF-8 text through the guarded reader (a regular file of at most
    ``fsutil.MAX_TEXT_BYTES``; a FIFO, a device or a folder is refused without reading).  ``tokens``:
    the most the caller uses, from the start: only the bytes those could take are read."""
    from edgellm.core.files import read_text as guarded

    upto = None if tokens is None else max(16 << 20, BYTES_PER_TOKEN * tokens)
    return guarded(path, upto=upto)


BYTES_PER_TOKEN = 64                # far more than any tokenizer takes on average (2-5)


def run(args) -> int:
    from edgellm.exporters.verify.evaluate import evaluate, open_target

    text = _text(args.data, args.context * args.windows)
    target = open_target(args.target, args.context, args.threads)
    reference = open_target(args.reference, args.context, args.threads) if args.reference else None
    line = StageLine()
    try:
        r = evaluate(target, text, args.context, args.windows, reference,
                     progress=lambda i, n: line(f"scoring window {i}/{n}"))
    finally:
        line.done()
    if args.json:
        print_json(r.to_dict())
        return 0
    print(f"{r.target}: perplexity {r.perplexity:.4f} over {r.tokens_scored} tokens "
          f"({r.windows} windows of {r.context})")
    if r.reference is not None:
        print(f"vs {r.reference} (perplexity {r.reference_perplexity:.4f}): mean KLD {r.mean_kld:.5f}, "
              f"p99 {r.p99_kld:.5f}, top-1 agreement {r.top1_agreement:.1%}, "
              f"perplexity x{r.perplexity / r.reference_perplexity:.4f}")
    return 0
