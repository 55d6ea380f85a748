"""The plan's quality model (edgellm/formats/quality.py): its fit and its check, every point in one table.

    python benchmarks/quality_model.py            # predicted vs measured/published with the shipped constants
    python benchmarks/quality_model.py --fit      # refit on every point; prints the constants to ship

Points:
- published: llama.cpp's tools/perplexity/README.md, "LLaMA 3 8b Scoreboard" and "LLaMA 2 vs.
  LLaMA 3 Quantization comparison" (revision f364eb6f, CUDA backend, wikitext-2, mean KLD against
  FP16).  Their FP16 logits are stored as 16-bit integers between runs; the table's own "f16" row
  (0.000551) is that storage alone, and is added to every Llama-3 prediction before comparing.
- measured here: ``benchmarks/data/quality/*.json``, written by ``benchmarks/quality.py --json``
  (held-out text, windows of 512, KLD against the model's own F16 GGUF through llama.cpp; ONNX
  through ONNX Runtime against the same reference).  The real SmolLM2-135M-Instruct's weights sit
  on a Q4_1 grid (exporters/real_model.py), so its 4-bit and 5-bit rows are shown but not fitted.

Columns: "fit" predicts with every point in the fit; "left out" refits without the point's whole
model first, which is what a model the fit never saw can expect.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "benchmarks" / "data" / "quality"
LLAMA_CPP = ("llama.cpp tools/perplexity/README.md (f364eb6f)")
L3_STORAGE_FLOOR = 0.000551

LLAMA2_7B = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 4096,
             "intermediate_size": 11008, "num_hidden_layers": 32, "num_attention_heads": 32,
             "num_key_value_heads": 32, "vocab_size": 32000, "max_position_embeddings": 4096,
             "rms_norm_eps": 1e-5, "tie_word_embeddings": False}
# (quant, calibration, mean KLD)
PUBLISHED = {
    "Llama-3-8B": ("meta-llama/Llama-3.1-8B-Instruct", [   # the same shape; the table's model is Llama 3 8B
        ("Q8_0", None, 0.001355), ("Q6_K", None, 0.005452), ("Q5_K_M", None, 0.010762),
        ("Q4_K_M", None, 0.031273), ("Q4_0", None, 0.071940), ("Q3_K_M", None, 0.101913), ("Q2_K", None, 0.445132),
        ("Q4_K_M", "imatrix", 0.028152), ("IQ4_XS", "imatrix", 0.036334), ("Q3_K_M", "imatrix", 0.084358),
        ("Q2_K", "imatrix", 0.332223)]),
    "Llama-2-7B": (LLAMA2_7B, [
        ("Q8_0", None, 0.000369), ("Q6_K", None, 0.002098), ("Q4_K_M", None, 0.012686), ("Q2_K", None, 0.108903)]),
}
A_PRIOR = (-11.0, -0.5)               # a0, a1: 8-bit activations' noise (where the fit starts)
S_PRIOR = (1.0, -0.2, 0.4, 1.0)         # s0, s1 (size), s2, s3 (tokens per parameter): where the fit starts
GRID_CAVEAT = {"Q4_K_M", "Q4_0", "IQ4_XS", "Q5_K_M", "onnx:int4/32", "onnx:int4/128"}   # re-quantized Q4_1 grids


# edgellm's `bench` reference model (trained on a GPU; not on every machine): recorded in
# benchmarks/RESULTS.md, "Quality kept on the bench model" (32 held-out windows of 512 tokens)
BENCH = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 512, "intermediate_size": 1280,
         "num_hidden_layers": 8, "num_attention_heads": 8, "num_key_value_heads": 4, "vocab_size": 4096,
         "max_position_embeddings": 512, "rms_norm_eps": 1e-5, "tie_word_embeddings": True}
BENCH_TOKENS = 2400 * 32 * 512
RECORDED = {"reference bench (RESULTS.md)": (BENCH, BENCH_TOKENS, [
    ("Q4_K_M", None, 0.00573), ("Q3_K_M", None, 0.01823), ("Q2_K", None, 0.07440),
    ("Q4_K_M", "edgellm", 0.00331), ("Q3_K_M", "edgellm", 0.00921), ("Q2_K", "edgellm", 0.03504),
    ("Q4_K_M", "imatrix", 0.00573 * 0.964), ("Q3_K_M", "imatrix", 0.01823 * 0.927), ("Q2_K", "imatrix", 0.07440 * 0.879)])}


def WEIGHT(p) -> float:
    """Published scoreboards and the real model count three times a reference model's point: the
    plan is for real models, and edgellm's reference models are small and undertrained."""
    return 1.0 if p.model_name.startswith("reference") else 3.0


class Point:
    def __init__(self, model_name, model, build, calibration, kld, source, floor=0.0, fitted=True, tokens=None):
        self.model_name, self.model, self.build, self.calibration = model_name, model, build, calibration
        self.kld, self.source, self.floor, self.fitted, self.tokens = kld, source, floor, fitted, tokens
        self.typed = typed_tensors(model, build)


def typed_tensors(model, build: str):
    from edgellm.formats.gguf_recipes import tensor_types

    if build.startswith("onnx:"):
        return [(t, build) for t in model.tensors if t.quantizable]
    return [(t, ty) for t, ty in tensor_types(model, build) if t.quantizable]


def _config(spec, name: str):
    from edgellm import models

    if isinstance(spec, dict):
        import tempfile

        d = Path(tempfile.mkdtemp(prefix="edgellm-qm-"))
        (d / "config.json").write_text(json.dumps(spec))
        cfg = models.load_config(str(d))
    else:
        cfg = models.load_config(spec)
    import dataclasses

    return dataclasses.replace(cfg, name=name)


def points() -> list[Point]:
    out = []
    for name, (spec, rows) in PUBLISHED.items():
        model = _config(spec, name)
        floor = L3_STORAGE_FLOOR if name == "Llama-3-8B" else 0.0
        for quant, cal, kld in rows:
            out.append(Point(name, model, quant, cal, kld, f"published: {LLAMA_CPP}", floor))
    for name, (spec, tokens, rows) in RECORDED.items():
        model = _config(spec, name)
        for quant, cal, kld in rows:
            # shown, not fitted: a model this machine cannot re-measure, from an earlier commit
            out.append(Point(name, model, quant, cal, kld, "recorded: benchmarks/RESULTS.md", tokens=tokens,
                             fitted=False))
    for f in sorted(DATA.glob("*.json")):
        r = json.loads(f.read_text())
        from edgellm import models
        import dataclasses

        folder = Path(r["model"])
        if not (folder / "config.json").is_file():
            print(f"# {f.name}: {folder} is not here; its points are skipped", file=sys.stderr)
            continue
        model = dataclasses.replace(models.load_config(str(folder)), name=r.get("name", folder.name))
        real = "smollm2" in folder.name
        for quant, row in r.get("gguf", {}).items():
            for kind, cal in (("plain", None), ("imatrix", "imatrix"), ("calibrated", "edgellm")):
                if kind in row:
                    caveat = real and quant in GRID_CAVEAT
                    out.append(Point(model.name, model, quant, cal, row[kind]["mean_kld"],
                                     f"measured: {f.name}", fitted=not caveat))
        for label, row in r.get("onnx", {}).items():
            build = f"onnx:{label}"
            if label == "fp16":
                continue
            for kind, cal in (("plain", None), ("calibrated", "edgellm-onnx")):
                if kind in row:
                    caveat = real and build in GRID_CAVEAT
                    out.append(Point(model.name, model, build, cal, row[kind]["mean_kld"], f"measured: {f.name}",
                                     fitted=not caveat))
    return out


# -- the fit ------------------------------------------------------------------------------------
def _types(pts) -> list[str]:
    return sorted({ty for p in pts for _, ty in p.typed if ty not in ("F32", "F16", "BF16")})


def _unpack(theta, types):
    from edgellm.formats import quality as q

    table = dict(q.NOISE)
    for i, ty in enumerate(types):
        table[ty] = math.exp(float(np.clip(theta[i], -40, 5)))
    n = len(types)
    s = tuple(float(np.clip(x, -30, 30)) for x in theta[n:n + 4])
    g = 1 / (1 + math.exp(-float(np.clip(theta[n + 4], -30, 30))))
    knee = math.exp(float(np.clip(theta[n + 5], -10, 10)))
    act = (float(np.clip(theta[n + 6], -30, 0)), float(np.clip(theta[n + 7], -3, 3)))
    return table, s, g, knee, act


def predict(p: Point, table, s, g, knee, act, factors) -> float:
    from edgellm.formats import quality as q

    x = q.sensitivity(p.model, s, p.tokens) * q.noise(p.model, p.typed, table, g, act)
    return q.kld_of(x * q.calibration_factor(p.calibration, p.build, factors), knee) + p.floor


def factors_from(pts) -> dict:
    """Calibration factors per method and build: calibrated / plain over every model that has
    both.  llama.cpp's importance matrix: the geometric mean.  edgellm's own methods: the largest
    ratio any model measured, since their gains vary most between models (0.03x to 0.47x at Q2_K)
    and a plan must not promise what one model happened to give."""
    plain = {(p.model_name, p.build): p.kld for p in pts if p.calibration is None}
    ratios: dict[str, dict[str, list[float]]] = {}
    for p in pts:
        usable = p.fitted or p.source.startswith("recorded")       # ratios need no sensitivity: all but grid-bound
        if p.calibration and (p.model_name, p.build) in plain and usable:
            base = plain[(p.model_name, p.build)] - p.floor
            ratios.setdefault(p.calibration, {}).setdefault(p.build, []).append((p.kld - p.floor) / base)
    out = {}
    for method, by in ratios.items():
        allr = [r for rs in by.values() for r in rs]
        pick = (lambda rs: float(np.exp(np.mean(np.log(rs))))) if method == "imatrix" else max
        out[method] = {"default": pick(allr)}
        for build, rs in by.items():
            out[method][build] = pick(rs)
    return out


def fit(pts, iters: int = 60):
    from edgellm.formats import quality as q

    use = [p for p in pts if p.fitted and p.calibration is None]
    types = _types(use)
    prior = {ty: math.log(q.NOISE[ty]) for ty in types}
    theta = np.array([prior[ty] for ty in types] + list(S_PRIOR) + [-1.0, 0.0, *A_PRIOR])
    lam = 0.3                                   # weak pull of each type's noise to its Gaussian-data value

    def residuals(th):
        table, s, g, knee, act = _unpack(th, types)
        r = [WEIGHT(p) * (math.log(predict(p, table, s, g, knee, act, {})) - math.log(p.kld)) for p in use]
        r += [lam * (th[i] - prior[ty]) for i, ty in enumerate(types)]
        # weak priors where few models speak: size and training length act as the precision
        # scaling literature has them (smaller and longer-trained models lose more per bit)
        n = len(types)
        r += [0.3 * (th[n + 1] - S_PRIOR[1]), 0.3 * (th[n + 2] - S_PRIOR[2]), 0.3 * (th[n + 3] - S_PRIOR[3])]
        r += [0.1 * (th[n + 6] - A_PRIOR[0]), 0.3 * (th[n + 7] - A_PRIOR[1])]
        return np.array(r)

    mu = 1e-2
    for _ in range(iters):
        r = residuals(theta)
        J = np.empty((len(r), len(theta)))
        for j in range(len(theta)):
            d = np.zeros_like(theta)
            d[j] = 1e-4
            J[:, j] = (residuals(theta + d) - residuals(theta - d)) / 2e-4
        step = np.linalg.solve(J.T @ J + mu * np.eye(len(theta)), -J.T @ r)
        new = theta + step
        if (residuals(new) ** 2).sum() < (r ** 2).sum():
            theta, mu = new, mu / 3
        else:
            mu *= 4
    table, s, g, knee, act = _unpack(theta, types)
    # block sizes nobody measured, between and beyond the measured ones (noise per block doubles
    # alike per halving of the block count: geometric steps), and per-channel int4 past blocks of 128
    if "onnx:int4/32" in types and "onnx:int4/128" in types:
        e32, e128 = table["onnx:int4/32"], table["onnx:int4/128"]
        step = math.sqrt(e128 / e32)
        table["onnx:int4/64"], table["onnx:int4/16"] = e32 * step, e32 / step
        table["onnx:int4/channel"] = e128 * step
    return table, s, g, knee, act, factors_from(pts)


def main() -> int:
    from edgellm.formats import quality as q

    ap = argparse.ArgumentParser()
    ap.add_argument("--fit", action="store_true", help="refit and print the constants")
    a = ap.parse_args()
    pts = points()
    if a.fit:
        table, s, g, knee, act, factors = fit(pts)
    else:
        table, s, g, knee, act, factors = q.NOISE, q.SENSITIVITY, q.GATHERED, q.KNEE, q.ACTIVATIONS, q.CALIBRATION
    by_model = sorted({p.model_name for p in pts})
    left = {}
    for m in by_model:
        rest = [p for p in pts if p.model_name != m]
        if any(p.fitted and p.calibration is None for p in rest):
            left[m] = fit(rest)
    print(f"{'model':28s} {'build':14s} {'calibration':12s} {'actual':>9s} {'fit':>9s} {'ratio':>6s} "
          f"{'left out':>9s} {'ratio':>6s}  source")
    errs, lo_errs = [], []
    by_kind: dict[str, list[float]] = {"plain": [], "calibrated": []}
    for p in pts:
        pred = predict(p, table, s, g, knee, act, factors)
        lo = left.get(p.model_name)
        lpred = predict(p, *lo, ) if lo else float("nan")
        mark = "" if p.fitted else (" (not fitted: recorded elsewhere)" if p.source.startswith("recorded")
                                    else " (Q4_1 grid: not fitted)")
        print(f"{p.model_name[:28]:28s} {p.build:14s} {p.calibration or '-':12s} {p.kld:9.5f} {pred:9.5f} "
              f"{pred / p.kld:6.2f} {lpred:9.5f} {lpred / p.kld:6.2f}  {p.source}{mark}")
        if p.fitted:
            errs.append(abs(math.log(pred / p.kld)))
            if lo:
                lo_errs.append(abs(math.log(lpred / p.kld)))
                by_kind["calibrated" if p.calibration else "plain"].append(abs(math.log(lpred / p.kld)))
    print(f"\ntypical error factor (exp of mean |log ratio|): fit {math.exp(np.mean(errs)):.2f}, "
          f"left out {math.exp(np.mean(lo_errs)):.2f}; worst fit {math.exp(max(errs)):.2f}")
    spread = {k: math.exp(np.mean(v)) if v else float("nan") for k, v in by_kind.items()}
    print("left out, by kind: " + ", ".join(f"{k} {v:.2f}" for k, v in spread.items()))
    if a.fit:
        print("\n# constants for edgellm/formats/quality.py")
        print("NOISE = {" + ", ".join(f'"{k}": {v:.3e}' for k, v in sorted(table.items())) + "}")
        print(f"SENSITIVITY = ({s[0]:.4f}, {s[1]:.4f}, {s[2]:.4f}, {s[3]:.4f})")
        print(f"GATHERED = {g:.3f}")
        print(f"KNEE = {knee:.4f}")
        print(f"ACTIVATIONS = ({act[0]:.4f}, {act[1]:.4f})")
        print("CALIBRATION = " + json.dumps({m: {k: round(v, 3) for k, v in f.items()} for m, f in factors.items()}))
        print(f"SPREAD = {spread['plain']:.2f}")
        print(f"SPREAD_CALIBRATED = {spread['calibrated']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
