"""Quality per byte on edgellm's trained reference model: plain llama.cpp types, llama.cpp's
importance-matrix method, and edgellm's calibrated builds; ONNX RTN vs calibrated int4.

KL divergence is measured against the model's own F16 GGUF (llama.cpp), position by position, over
held-out text (``edgellm.textdata``) in windows of 512 tokens; every build is scored on the same
windows against the same reference logits.  "imatrix" is llama.cpp's method: the same per-tensor
recipe as plain, rounded by ggml's quantizers with an importance matrix (mean x² per input column,
what ``llama-imatrix`` collects) gathered on the calibration text.  "calibrated" is
``edgellm export --calibrate``.  The calibration text is the default (training split).

Usage: python benchmarks/quality.py [--model DIR | --reference bench|docs|small] [--windows 32] [--types Q4_K_M,Q2_K] [--gguf-only | --onnx-only] [--calibrated-only]
           [--calib-windows N] [--calib-corpus C] [--score-corpus C] [--hessian-windows N] [--precision P] [--json OUT]
       python benchmarks/quality.py --time-calibration DIR     # wall time of calibrating a big model
(DIR defaults to the ``bench`` reference model: python benchmarks/reference_gpu.py makes it.)
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

GGUF = ("Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M", "Q4_0", "IQ4_XS", "Q3_K_M", "Q2_K")
ONNX = (("fp16", None), ("int8", 32), ("int4", 32), ("int4", 128))


def _scorer(ref_path: Path, context: int, windows: int, held_out: str):
    from edgellm.exporters.verify.evaluate import windows_of
    from edgellm.metrics import log_softmax
    from edgellm.runtime.llamacpp import LlamaCppModel

    ref = LlamaCppModel(ref_path, n_ctx=context, threads=2, scoring=True)
    wins = windows_of(ref.tokenize(held_out, add_bos=False), context, windows)
    ref_lp = [log_softmax(ref.logits(w)).astype(np.float32) for w in wins]   # float32: half the memory
    del ref

    def score(model) -> dict:
        kld, same, nll, nll_ref = [], [], [], []
        for w, lr in zip(wins, ref_lp):
            lc = log_softmax(model.logits(w)).astype(np.float32)
            kld.append((np.exp(lr) * (lr - lc)).sum(-1))
            same.append(lr.argmax(-1) == lc.argmax(-1))
            nxt, pos = np.asarray(w[1:]), np.arange(len(w) - 1)
            nll.append(-lc[pos, nxt])
            nll_ref.append(-lr[pos, nxt])
        k = np.concatenate(kld)
        return {"mean_kld": float(k.mean()), "p99_kld": float(np.percentile(k, 99)),
                "top1": float(np.concatenate(same).mean()),
                "ppl_ratio": float(np.exp(np.concatenate(nll).mean() - np.concatenate(nll_ref).mean()))}
    return score, sum(map(len, wins))


def run(model_dir: Path, windows: int, context: int = 512, types=GGUF, onnx: bool = True, calibrated_only: bool = False,
        calib_windows: int | None = None, calib_corpus: str | None = None, score_corpus: str | None = None,
        **cal_kw) -> dict:
    """``windows``: the held-out windows scored; ``calib_windows``: the calibration's (None: its default).
    ``calib_corpus`` / ``score_corpus``: the text calibrated on (training split) and scored on (held-out
    split), "source" or "docs"; both default to the model's own (a reference model's training text,
    else the standard library's source).  Different ones measure a calibration off its home ground."""
    if calib_windows:
        cal_kw["windows"] = calib_windows
    from edgellm import models
    from edgellm.exporters.calibrate import CalibrationData
    from edgellm.exporters.io.checkpoint import open_checkpoint
    from edgellm.models.families import family_for
    from edgellm.exporters.gguf.mix import by_gguf_name, calibrated_gguf
    from edgellm.exporters.gguf.vocab import read_vocab
    from edgellm.exporters.gguf.write import write_gguf
    from edgellm.runtime.llamacpp import LlamaCppModel

    from edgellm.exporters.reference_model import corpus_of
    from edgellm.textdata import corpus_text

    model = models.load_config(str(model_dir))
    ckpt, arch = open_checkpoint(model_dir), family_for(model, "gguf")
    vocab = read_vocab(model_dir, model.vocab)
    corpus = corpus_of(model_dir)           # a reference model's own text: calibrated on, scored on its held-out
    calib_corpus, score_corpus = calib_corpus or corpus, score_corpus or corpus
    if calib_corpus != "source":
        cal_kw = {"text": corpus_text(calib_corpus, "training", 1 << 20), "source": f"{calib_corpus} training split",
                  **cal_kw}
    work = Path(tempfile.mkdtemp(prefix="edgellm-quality-"))
    out: dict = {"model": str(model_dir), "parameters": model.n_params, "context": context, "corpus": corpus,
                 "calib_corpus": calib_corpus, "score_corpus": score_corpus, "gguf": {}, "onnx": {}}
    try:
        t0 = time.perf_counter()
        cal = CalibrationData(**cal_kw).stats(model_dir, hessian=True, fisher=True, threads=2)
        out["calibration"] = {"tokens": cal.tokens, "seconds": round(time.perf_counter() - t0, 1),
                              "precision": getattr(cal, "precision", "float32")}
        imatrix = by_gguf_name(arch, cal.imatrix)

        def gguf(name: str, quant: str, **kw) -> Path:
            p = work / f"{name}.gguf"
            write_gguf(model, ckpt, arch, vocab, model_dir, p, quant, 2, **kw)
            return p

        score, tokens = _scorer(gguf("F16", "F16"), context, windows, corpus_text(score_corpus, "held_out"))
        out["tokens_scored"] = tokens
        f16_bytes = (work / "F16.gguf").stat().st_size

        def measure(path: Path) -> dict:
            r = score(LlamaCppModel(path, n_ctx=context, threads=2, scoring=True))
            size = path.stat().st_size
            path.unlink()
            return {**r, "bytes": size, "size_vs_f16": size / f16_bytes}

        for q in types:
            t = time.perf_counter()
            c = calibrated_gguf(model, ckpt, arch, q, cal, threads=2)
            alloc_s = time.perf_counter() - t
            t = time.perf_counter()
            cal_path = gguf(q + "-cal", q, types=c.mix.types, imatrix=c.imatrix, compensators=c.compensators)
            write_s = time.perf_counter() - t
            out["gguf"][q] = {"calibrated": {**measure(cal_path), "allocation_seconds": round(alloc_s, 1),
                                             "write_seconds": round(write_s, 1), "mix": c.mix.to_dict()}}
            if calibrated_only:
                print(f"gguf {q:7s} calibrated KLD {out['gguf'][q]['calibrated']['mean_kld']:.5f}", flush=True)
                continue
            out["gguf"][q] = {"plain": measure(gguf(q, q)), "imatrix": measure(gguf(q + "-im", q, imatrix=imatrix)),
                              **out["gguf"][q]}
            _print_gguf(q, out["gguf"][q])
        for quant, block in ONNX if onnx else ():
            kinds = ("plain", "calibrated") if quant == "int4" else ("plain",)
            row = {}
            for kind in kinds:
                row[kind] = _onnx(model, model_dir, ckpt, cal, quant, block, kind == "calibrated", work, score)
            label = quant if block is None or quant != "int4" else f"int4/{block}"
            out["onnx"][label] = row
            print(f"onnx {label:9s} " + "  ".join(f"{k} KLD {v['mean_kld']:.5f} ({v['bytes'] / 1e6:.2f} MB)"
                                                  for k, v in row.items())
                  + (f"  ratio {row['calibrated']['mean_kld'] / row['plain']['mean_kld']:.3f}" if "calibrated" in row else ""),
                  flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out


def _onnx(model, model_dir, ckpt, cal, quant, block, calibrated, work, score) -> dict:
    import onnx

    from edgellm.models.families import family_for
    from edgellm.exporters.onnx.graph import Reader, build
    from edgellm.exporters.onnx.gptq import calibrated_quantizer
    from edgellm.exporters.onnx.weights import ExternalData
    from edgellm.exporters.package import copy_tokenizer
    from edgellm.exporters.io.tokenizer_source import effective_tokenizer
    from edgellm.runtime.onnxrt import OnnxModel

    arch = family_for(model, "onnx")
    d = work / f"onnx-{quant}-{block}-{calibrated}"
    d.mkdir()
    w = ExternalData(d / "model.onnx.data")
    qz = calibrated_quantizer(arch, cal.hessian, block) if calibrated else None
    t = time.perf_counter()
    m = build(arch, Reader(ckpt), w, quant, block or 32, 4, int4_quantizer=qz)
    w.close()
    seconds = time.perf_counter() - t
    onnx.save(m, str(d / "model.onnx"))
    copy_tokenizer(model_dir, d)
    eff = effective_tokenizer(model_dir)                 # what the bundle ships: what transformers runs
    if eff.json_text and (eff.differs or not (d / "tokenizer.json").is_file()):
        (d / "tokenizer.json").write_text(eff.json_text)
    size = (d / "model.onnx").stat().st_size + (d / "model.onnx.data").stat().st_size
    r = score(OnnxModel(d / "model.onnx", threads=2))
    shutil.rmtree(d)
    return {**r, "bytes": size, "build_seconds": round(seconds, 1)}


def _print_gguf(q: str, row: dict) -> None:
    p, i, c = row["plain"], row["imatrix"], row["calibrated"]
    print(f"gguf {q:7s} plain KLD {p['mean_kld']:.5f} ({p['bytes'] / 1e6:.2f} MB) | imatrix {i['mean_kld']:.5f} "
          f"x{i['mean_kld'] / p['mean_kld']:.3f} | calibrated {c['mean_kld']:.5f} x{c['mean_kld'] / p['mean_kld']:.3f} "
          f"at {c['bytes'] / p['bytes']:.4f}x the bytes", flush=True)


def time_calibration(model_dir: Path) -> dict:
    """Wall time ``--calibrate`` adds to an export: statistics (forward + Fisher backward passes on
    16 windows of 512), the per-tensor sensitivity search and the compensated write for Q4_K_M
    (less a plain write); GPTQ Hessians and the int4 build."""
    from edgellm import models
    from edgellm.exporters.calibrate import CalibrationData
    from edgellm.exporters.io.checkpoint import open_checkpoint
    from edgellm.models.families import family_for
    from edgellm.exporters.gguf.mix import calibrated_gguf
    from edgellm.exporters.gguf.vocab import read_vocab
    from edgellm.exporters.gguf.write import write_gguf
    from edgellm.runtime.profiling import peak_rss_bytes

    model = models.load_config(str(model_dir))
    ckpt = open_checkpoint(model_dir)
    t = time.perf_counter()
    cal = CalibrationData().stats(model_dir, fisher=True, hessian=True, threads=2)
    stats_s = time.perf_counter() - t
    t = time.perf_counter()
    arch = family_for(model, "gguf")
    c = calibrated_gguf(model, ckpt, arch, "Q4_K_M", cal, threads=2)
    alloc_s = time.perf_counter() - t
    work = Path(tempfile.mkdtemp(prefix="edgellm-caltime-"))
    try:
        t = time.perf_counter()
        write_gguf(model, ckpt, arch, read_vocab(model_dir, model.vocab), model_dir, work / "m.gguf", "Q4_K_M", 2,
                   types=c.mix.types, imatrix=c.imatrix, compensators=c.compensators)
        write_s = time.perf_counter() - t
        t = time.perf_counter()
        write_gguf(model, ckpt, arch, read_vocab(model_dir, model.vocab), model_dir, work / "p.gguf", "Q4_K_M", 2)
        plain_s = time.perf_counter() - t
    finally:
        shutil.rmtree(work, ignore_errors=True)
    r = {"model": str(model_dir), "parameters": model.n_params, "gguf_statistics_s": round(stats_s, 1),
         "gguf_allocation_s": round(alloc_s, 1), "gguf_calibrated_write_s": round(write_s, 1),
         "gguf_plain_write_s": round(plain_s, 1),
         "gguf_total_s": round(stats_s + alloc_s + write_s - plain_s, 1)}
    del cal, c
    t = time.perf_counter()
    cal = CalibrationData().stats(model_dir, hessian=True, threads=2)
    r["onnx_hessian_s"] = round(time.perf_counter() - t, 1)
    from edgellm.models.families import family_for
    from edgellm.exporters.onnx.graph import Reader, build
    from edgellm.exporters.onnx.gptq import calibrated_quantizer
    from edgellm.exporters.onnx.weights import ExternalData

    work = Path(tempfile.mkdtemp(prefix="edgellm-caltime-"))
    try:
        t = time.perf_counter()
        arch = family_for(model, "onnx")
        w = ExternalData(work / "model.onnx.data")
        build(arch, Reader(ckpt), w, "int4", 32, 4, int4_quantizer=calibrated_quantizer(arch, cal.hessian, 32))
        w.close()
        r["onnx_gptq_build_s"] = round(time.perf_counter() - t, 1)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    r["onnx_total_s"] = round(r["onnx_hessian_s"] + r["onnx_gptq_build_s"], 1)
    r["peak_rss_bytes"] = peak_rss_bytes()
    print(json.dumps(r, indent=1))
    return r


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", type=Path, help="a model folder (default: the --reference model)")
    ap.add_argument("--reference", default="bench", choices=("bench", "docs", "small"),
                    help="edgellm's reference model to measure (bench: trained on a GPU; the others here when missing)")
    ap.add_argument("--windows", type=int, default=32)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--time-calibration", type=Path, metavar="DIR")
    ap.add_argument("--types", default=",".join(GGUF), help="GGUF types to compare (comma-separated)")
    ap.add_argument("--gguf-only", action="store_true", help="skip the ONNX builds")
    ap.add_argument("--onnx-only", action="store_true", help="skip the GGUF builds (the F16 reference stays)")
    ap.add_argument("--precision", help="calibration products: auto, float32, bfloat16 (default: auto)")
    ap.add_argument("--fisher-windows", type=int, help="windows the Fisher is estimated on (0: all; default: the library's)")
    ap.add_argument("--fisher-per", choices=("window", "token"), help="the Fisher's samples (default: the library's)")
    ap.add_argument("--calibrated-only", action="store_true", help="GGUF: score the calibrated builds only")
    ap.add_argument("--hessian-windows", type=int, help="windows GPTQ's XᵀX is gathered on (0: all; default: the library's)")
    ap.add_argument("--calib-windows", type=int, help="calibration windows (default: CalibrationData's)")
    ap.add_argument("--calib-corpus", choices=("source", "docs"), help="text calibrated on (default: the model's own)")
    ap.add_argument("--score-corpus", choices=("source", "docs"), help="held-out text scored (default: the model's own)")
    ap.add_argument("--sample-elements", type=int, help="weights a tensor's costs are estimated on "
                    "(default: gguf.mix.SAMPLE_ELEMENTS)")
    a = ap.parse_args()
    if a.sample_elements:
        from edgellm.exporters.gguf import mix
        mix.SAMPLE_ELEMENTS = a.sample_elements
    if a.time_calibration:
        res = time_calibration(a.time_calibration)
    else:
        from edgellm.exporters.reference_model import SPECS, cache_root
        model_dir = a.model or cache_root() / "reference" / SPECS[a.reference].cache_name
        if not model_dir.is_dir() and a.model is None and a.reference != "bench":
            from edgellm.exporters.reference_model import reference_model
            print(f"training the {a.reference} reference model (minutes on a CPU)")
            model_dir = reference_model(a.reference)
        if not model_dir.is_dir():
            raise SystemExit(f"{model_dir}: no reference model; make it with benchmarks/reference_gpu.py")
        res = run(model_dir, a.windows, types=() if a.onnx_only else tuple(a.types.split(",")), onnx=not a.gguf_only,
                  calibrated_only=a.calibrated_only,
                  **({"precision": a.precision} if a.precision else {}),
                  **({"fisher_windows": a.fisher_windows} if a.fisher_windows is not None else {}),
                  **({"fisher_per": a.fisher_per} if a.fisher_per else {}),
                  **({"hessian_windows": a.hessian_windows} if a.hessian_windows is not None else {}),
                  calib_windows=a.calib_windows, calib_corpus=a.calib_corpus, score_corpus=a.score_corpus)
    if a.json:
        a.json.write_text(json.dumps(res, indent=1))
