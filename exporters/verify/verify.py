"""Verification of an export against the original model, run by every export, for every format.

The reference is the Hugging Face model in float32 through transformers; the candidate is the
exported file through the runtime that will run it on the device (llama.cpp for GGUF, ONNX
Runtime for ONNX), fed the very same token ids.  Checked, in order:
1. tokenization: the bundle's tokenizer gives the ids the Hugging Face tokenizer gives;
2. unquantized files (GGUF F16, ONNX fp32/fp16): logits agree to float tolerance, and along the
   original's 32-token greedy continuation of each prompt the candidate picks the same token at
   every step, except where the
   original's own top-2 margin is inside the measured float difference (a tie: counted, reported);
3. every file: mean/p99 KL divergence, top-1 agreement and perplexity change on held-out text.
A failure of 1 or 2 fails the export, naming the prompt and the size of the difference.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgellm.errors import EdgeLLMError
from edgellm.exporters.io.reference import load_reference
from edgellm.metrics import Tally, aligned
from edgellm.runtime.backend import logit_slices
from edgellm.textdata import held_out_text, text_ids

PROMPTS = (
    "The capital of France is",
    "def fibonacci(n):\n    if n < 2:\n        return n\n",
    "Small devices run language models when the weights fit in memory and",
    "1, 2, 3, 4, 5,",
)
GREEDY_TOKENS = 32
HELD_OUT_WINDOWS = 4     # windows of the context scored for KLD, top-1 and perplexity
# logit tolerances per format live with the formats (edgellm/formats/)
F16_MAX_KLD = 1e-3
CHAT_PROBE = "Write a haiku about small computers."


class VerificationFailed(EdgeLLMError):
    exit_code = 5


def _hf_logits(model, ids: list[int]) -> np.ndarray:
    import torch

    device = next(model.parameters()).device            # the host, or the GPU a student trained on
    with torch.no_grad():
        return model(torch.tensor([ids], device=device)).logits[0].float().cpu().numpy()


def hf_logit_slices(model, ids: list[int], rows: int | None = None):
    """(first position, float32 logits of a slice of positions) of the original model over ``ids``.
    The transformer body runs once; the head, and whatever the family applies after it (Gemma's
    soft-capping, Granite's scaling), run a slice of positions at a time through the model's own
    forward (``logits_to_keep``), so [positions, vocabulary] never exists whole: a 262,144-token
    vocabulary costs one 64 MB slice, not 512 MB per 512 positions.  Models whose forward takes no
    ``logits_to_keep`` give all positions at once."""
    import inspect

    import torch

    from edgellm.metrics import rows_per_slice

    body = getattr(model, getattr(model, "base_model_prefix", ""), None)
    vocab = model.get_output_embeddings().weight.shape[0] if model.get_output_embeddings() is not None else 0
    rows = rows or 2 * rows_per_slice(vocab)                  # float32 here: twice the float64 rows
    if body is None or len(ids) <= rows or "logits_to_keep" not in inspect.signature(model.forward).parameters:
        yield 0, _hf_logits(model, ids)
        return
    device = next(model.parameters()).device
    x = torch.tensor([ids], device=device)
    with torch.no_grad():
        out = body(input_ids=x, use_cache=False)
        body.forward = lambda *a, **k: out                   # the model's forward reuses the body's output
        try:
            for a in range(0, len(ids), rows):
                lg = model(input_ids=x, logits_to_keep=slice(a, a + rows), use_cache=False).logits[0]
                yield a, lg.float().cpu().numpy()
        finally:
            del body.forward


def _hf_greedy(model, ids: list[int], n: int) -> list[int]:
    import torch

    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), max_new_tokens=n, min_new_tokens=n, do_sample=False,
                             num_beams=1, pad_token_id=0)
    return out[0, len(ids):].tolist()


def _check_greedy(ref: np.ndarray, got: np.ndarray, seq: list[int], start: int, prompt: str, name: str) -> int:
    """Teacher-forced along a greedy continuation ``seq[start:]`` (the runtime's own, or the
    original's where the runtime generates none): at each position both must choose the same next
    token, unless the original's margin for its choice over the runtime's is within the float
    difference measured at that position (a tie); returns the number of ties.  Where they agree
    at every position, the continuation is each one's greedy continuation, whichever made it."""
    ties = 0
    for pos in range(start - 1, len(seq) - 1):
        want, chose = int(ref[pos].argmax()), int(got[pos].argmax())
        if chose == want:
            continue
        margin = float(ref[pos, want] - ref[pos, chose])
        noise = float(np.abs(ref[pos] - got[pos]).max())
        if margin > 2 * noise:
            raise VerificationFailed(f"{name}: greedy continuation of {prompt[:30]!r} diverges from the original "
                                     f"at token {pos + 2 - start} of {GREEDY_TOKENS} (margin {margin:.4f} > "
                                     f"float noise {noise:.4f})")
        ties += 1
    return ties


def verify_file(model_dir: Path, choice, path: Path, threads: int, trust_remote_code: bool = False,
                context: int = 512, progress=lambda msg: None) -> dict:
    """An exported file through the runtime backend its format names, to that format's tolerance."""
    from edgellm.formats import format_for
    from edgellm.runtime.backend import load_backend

    fmt = format_for(choice)
    tolerance = fmt.tolerance(choice.quant)
    # a float build's logits check the conversion itself, so its runtime runs exactly (llama.cpp's
    # f16 cache); a quantized build is measured as it ships (its cache type too)
    ships = fmt.backend_options(choice)
    options = ships if tolerance is None else {}
    cand = load_backend(fmt.backend, path, context, threads, scoring=True, **options)
    report = verify_candidate(model_dir, cand, path.name, fmt.runtime, tolerance, trust_remote_code, context,
                              progress)
    if tolerance is not None and not fmt.exact_cache(choice):     # the manifest says what was measured
        report["measured_with"] = (f"{fmt.runtime}'s exact defaults, to check the conversion; the bundle runs "
                                   + ", ".join(f"{k} {v}" for k, v in sorted(ships.items())))
    return report


def _check_chat(tok, cand, name: str, runtime: str) -> str:
    """Whether the runtime's chat prompt (the bundle's template, rendered in edgellm's sandbox) has
    the ids transformers' apply_chat_template gives."""
    if not getattr(tok, "chat_template", None):
        return "none in the model"
    messages = [{"role": "user", "content": CHAT_PROBE}]
    ours = cand.prompt_ids(CHAT_PROBE, chat=True)       # first: a hostile template stops here, sandboxed
    theirs = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    theirs = list(theirs["input_ids"] if hasattr(theirs, "keys") else theirs)
    if ours != theirs:
        # reported, not fatal: llama.cpp's SentencePiece tokenizer spaces text after a special token
        # its own way, so such models are prompted a little differently from transformers
        at = next(i for i, (a, b) in enumerate(zip(ours + [-1], theirs + [-1])) if a != b)
        return f"differs from transformers' prompt at token {at} of {len(theirs)}"
    return "identical prompt ids"


def verify_candidate(model_dir: Path, cand, name: str, runtime: str, tolerance: float | None,
                     trust_remote_code: bool = False, context: int = 512, progress=lambda msg: None) -> dict:
    """``cand`` offers ``tokenize(text, add_bos)`` and ``logits(ids)``; ``tolerance`` (max |logit
    difference| / spread) is given for unquantized files, which must also keep greedy continuations."""
    tok, hf = load_reference(model_dir, trust_remote_code)
    bos = [tok.bos_token_id] if cand.tokenize("", add_bos=True) and tok.bos_token_id is not None else []
    report: dict = {"reference": "transformers float32", "runtime": runtime, "context": context}

    progress("checking the tokenizer")
    for p in PROMPTS + (held_out_text(2000),):
        ours, theirs = cand.tokenize(p, add_bos=False), tok.encode(p, add_special_tokens=False)
        if ours != theirs:
            at = next(i for i, (a, b) in enumerate(zip(ours + [-1], theirs + [-1])) if a != b)
            raise VerificationFailed(f"{name}: {runtime} tokenizes {p[:30]!r} differently from "
                                     f"the original tokenizer (first difference at token {at})")
    report["tokenizer"] = "identical ids on all prompts"
    if hasattr(cand, "prompt_ids"):
        report["chat_template"] = _check_chat(tok, cand, name, runtime)

    if tolerance is not None:
        progress("comparing logits and greedy continuations")
        worst, ties = 0.0, 0
        for p in PROMPTS:
            ids = bos + tok.encode(p, add_special_tokens=False)
            # the runtime's greedy continuation where it makes one (a float32 checkpoint's 32 steps
            # through transformers' generate were 45% of a tiny model's export and 12 s of
            # SmolLM2-135M's on a 2-core Zen 3), else the original's: the check is the same either way
            seq = ids + (cand.greedy_ids(ids, GREEDY_TOKENS) if hasattr(cand, "greedy_ids")
                         else _hf_greedy(hf, ids, GREEDY_TOKENS))
            ref, got = _hf_logits(hf, seq), cand.logits(seq)
            rel = float(np.abs(ref - got).max() / (ref.std() + 1e-12))
            worst = max(worst, rel)
            if rel > tolerance:
                raise VerificationFailed(f"{name}: logits for {p[:30]!r} differ by {rel:.4f} x their "
                                         f"spread (allowed {tolerance}); the conversion is wrong")
            ties += _check_greedy(ref, got, seq, len(ids), p, name)
        report["logits_max_rel_diff"] = worst
        report["greedy_tokens_checked"] = GREEDY_TOKENS * len(PROMPTS)
        report["greedy_ties_within_float_tolerance"] = ties

    progress("measuring KL divergence, top-1 agreement and perplexity on held-out text")
    agreement = _held_out_agreement(tok, hf, cand, bos, context)
    if not np.isfinite(agreement.mean_kld):
        raise VerificationFailed(f"{name}: non-finite logits; the file is broken")
    if tolerance is not None and agreement.mean_kld > F16_MAX_KLD:
        raise VerificationFailed(f"{name}: mean KL divergence {agreement.mean_kld:.5f} on held-out text "
                                 f"is too large for an unquantized file (allowed {F16_MAX_KLD})")
    report["held_out"] = agreement.to_dict()
    return report


def _held_out_agreement(tok, hf, cand, bos: list[int], context: int):
    """Agreement over up to HELD_OUT_WINDOWS non-overlapping windows of ``context`` tokens of
    held-out text, each scored on its own; every position predicts the next token of its window."""
    ids_of_text = text_ids(tok, held_out_text())
    step = context - len(bos)
    wins = [bos + ids_of_text[i:i + step] for i in range(0, len(ids_of_text) - step + 1, step)][:HELD_OUT_WINDOWS]
    wins = wins or [(bos + ids_of_text)[:context]]
    tally = Tally()
    for w in wins:
        nxt = np.asarray(w[1:], dtype=np.int64)          # position i predicts token i + 1; the last, nothing
        for a, ref, cand_rows in aligned(hf_logit_slices(hf, w), logit_slices(cand, w)):
            n = max(0, min(len(ref), len(w) - 1 - a))
            tally.add(ref[:n], cand_rows[:n], nxt[a:a + n])
    return tally.result()
