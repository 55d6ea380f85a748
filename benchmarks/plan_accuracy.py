"""Planner predictions against `edgellm profile` on this machine, for every GGUF type and ONNX
int4/int8: the plain roofline from a `device measure --no-kernels` profile, and the per-type rates
`device measure` takes by default (llama.cpp's and ONNX Runtime's kernels).

Target (issue 15): prefill and decode within ±15% of the measurement for every type.

    python benchmarks/plan_accuracy.py [WORK_DIR] [--types Q8_0,Q4_K_M,...] [--rounds 3] [--published-only]

Model: a random-weight Qwen2.5-0.5B shape (benchmarks/realsize_models.py); 512-token prompt,
128 generated, as the planner predicts.  Each bundle is profiled in ``--rounds`` rounds taken in
turn over the types (a shared machine's slow spells then fall on every type alike); the median
is compared, and the rounds' spread (max / min) is printed: a prediction cannot be judged more
finely than the measurement repeats.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
TYPES = ("F16", "Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M", "Q4_0", "IQ4_XS", "Q3_K_M", "Q2_K")


def edgellm(*args: str) -> str:
    exe = Path(sys.executable).with_name("edgellm")
    r = subprocess.run([str(exe), *args], capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"edgellm {' '.join(args)}: {r.stderr.strip()}")
    return r.stdout


# Published decode of llama.cpp-based runtimes on a Raspberry Pi 5 (cited in the profile's comments):
# (profile, model, its config.json fields, quant, low tok/s, high tok/s, source)
LLAMA = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "vocab_size": 128256,
         "num_key_value_heads": 8, "max_position_embeddings": 131072}
PUBLISHED = [
    ("rpi5-8gb", "Llama-3.2-3B", dict(LLAMA, hidden_size=3072, intermediate_size=8192, num_hidden_layers=28,
                                      num_attention_heads=24, head_dim=128, tie_word_embeddings=True),
     "Q4_K_M", 4.51, 4.88, "geerlingguy/ai-benchmarks#7 (Ollama, Pi 5 16 GB)"),
    ("rpi5-8gb", "Llama-3.1-8B", dict(LLAMA, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                                      num_attention_heads=32, tie_word_embeddings=False),
     "Q4_K_M", 1.87, 2.17, "geerlingguy/ai-benchmarks#7 (Ollama, Pi 5 16 GB)"),
]


def published() -> int:
    from edgellm import devices
    from edgellm.models.families import from_config_dict
    from edgellm.plan import planner
    from edgellm.formats.choice import BuildChoice

    print(f"{'device':9s} {'model':13s} {'type':7s} {'published':>11s} {'planned':>8s} {'ratio':>11s}  source")
    within = 0
    for prof, name, cfg, quant, lo, hi, source in PUBLISHED:
        device = devices.find(prof)
        model = from_config_dict(cfg, name)
        budgets = planner.budgets_for(device, None, None, 2048, model)
        tg = planner.evaluate_choice(model, device, budgets, BuildChoice("gguf", quant, "f16")).estimate.decode_tps
        within += 0.85 * hi <= tg <= 1.15 * lo
        print(f"{prof:9s} {name:13s} {quant:7s} {lo:5.2f}-{hi:<5.2f} {tg:8.2f} {tg / hi:5.2f}-{tg / lo:<5.2f}  {source}")
    print(f"{within}/{len(PUBLISHED)} planned decode within ±15% of every published figure")
    published_moe()
    return 0


# A mixture of experts (issue 29): (profile, bundled model, bits per weight of the published file,
# tok/s, source).  ByteShape's file is its own mix of llama.cpp's types (Q3_K_S-based); the plan's
# nearest builds are Q2_K and Q3_K_M, so the planned figure is their decode time interpolated in
# the file's bits per weight (decode streams the bytes a token's experts hold).
PUBLISHED_MOE = [("rpi5-16gb", "Qwen/Qwen3-30B-A3B", 2.70, 8.03,
                  "byteshape.com/blogs/Qwen3-30B-A3B-Instruct-2507 (llama.cpp, Pi 5 16 GB, Q3_K_S-2.70bpw)")]


def moe_planned(prof: str, model_id: str, bpw: float) -> float:
    """The plan's decode tok/s for ``model_id`` at ``bpw`` bits per weight on ``prof``."""
    from edgellm import devices, models
    from edgellm.formats import format_for
    from edgellm.formats.choice import BuildChoice
    from edgellm.plan import planner

    device, model = devices.find(prof), models.load_config(model_id)
    budgets = planner.budgets_for(device, None, None, 2048, model)
    points = []
    for quant in ("Q2_K", "Q3_K_M"):
        c = BuildChoice("gguf", quant, "f16")
        bits = 8 * format_for(c).weights(model, c)[0] / model.n_params
        points.append((bits, 1 / planner.evaluate_choice(model, device, budgets, c).estimate.decode_tps))
    (b0, t0), (b1, t1) = points
    return 1 / (t0 + (bpw - b0) * (t1 - t0) / (b1 - b0))


def published_moe() -> int:
    within = 0
    for prof, name, bpw, tps, source in PUBLISHED_MOE:
        tg = moe_planned(prof, name, bpw)
        within += 0.75 <= tg / tps <= 1.25
        print(f"{prof:9s} {name.split('/')[-1]:13s} {bpw:.2f}bpw {tps:11.2f} {tg:8.2f} {tg / tps:11.2f}  {source}")
    print(f"{within}/{len(PUBLISHED_MOE)} planned mixture-of-experts decode within ±25% of the published figure")
    return within


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("work", nargs="?", default=str(HERE.parent / ".refwork" / "plan-accuracy"))
    ap.add_argument("--types", default=",".join(TYPES))
    ap.add_argument("--onnx", default="int4,int8", help="ONNX builds too (comma list; empty for none)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--model", help="a Hugging Face folder to export instead of the random-weight Qwen2.5-0.5B "
                                    "shape (e.g. the real SmolLM2-135M-Instruct: exporters/real_model.py)")
    ap.add_argument("--reuse-kernels", action="store_true", help="keep WORK_DIR/here-kernels.toml if there")
    ap.add_argument("--published-only", action="store_true",
                    help="only the planner against published Raspberry Pi 5 figures (no measuring)")
    args = ap.parse_args()
    if args.published_only:
        return published()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(HERE))
    from realsize_models import build

    from edgellm import devices, models
    from edgellm.plan import planner

    model_dir = Path(args.model) if args.model else build("qwen2.5-0.5b", work / "qwen2.5-0.5b")
    plain, tuned = work / "here.toml", work / "here-kernels.toml"
    edgellm("device", "measure", "--name", "here", "--no-kernels", "-o", str(plain))
    if not args.reuse_kernels or not tuned.exists():
        edgellm("device", "measure", "--name", "here", "-o", str(tuned))
    model = models.load_config(str(model_dir))
    from edgellm.formats.choice import BuildChoice

    builds = [("gguf", q) for q in args.types.split(",") if q] + [("onnx", q) for q in args.onnx.split(",") if q]
    name = {b: b[1] if b[0] == "gguf" else f"onnx-{b[1]}" for b in builds}
    for fmt, quant in builds:
        out = work / f"bundle-{name[fmt, quant]}"
        if not (out / "manifest.json").exists():
            edgellm("export", str(model_dir), "--device", str(plain), "--format", fmt, "--quant", quant,
                    "--no-verify", "-o", str(out))
    samples: dict[tuple, list[tuple[float, float]]] = {b: [] for b in builds}
    for _ in range(args.rounds):
        for b in builds:
            rec = json.loads(edgellm("profile", str(work / f"bundle-{name[b]}"), "--prompt-tokens", "512",
                                     "--gen-tokens", "128", "--repeats", "2", "--json"))
            m = rec[0]["edgellm"]["measured"]
            samples[b].append((m["prefill_tps"], m["decode_tps"]))
    rows, spread = [], {}
    for b in builds:
        quant = name[b]
        pps, tgs = zip(*samples[b])
        spread[quant] = (max(pps) / min(pps), max(tgs) / min(tgs))
        preds = []
        # the build the bundle is (its KV cache type too: the export's plan chose it), not a default
        choice = BuildChoice.from_dict(json.loads((work / f"bundle-{quant}" / "manifest.json").read_text())["choice"])
        for prof in (plain, tuned):
            device = devices.find(str(prof))
            budgets = planner.budgets_for(device, None, None, 1024, model)
            c = planner.evaluate_choice(model, device, budgets, choice)
            preds.append((c.estimate.prefill_tps, c.estimate.decode_tps))
        rows.append((quant, statistics.median(pps), statistics.median(tgs), preds))
    print(f"{'build':10s} {'measured pp':>11s} {'tg':>7s} | {'roofline pp':>11s} {'ratio':>6s} {'tg':>7s} {'ratio':>6s} | "
          f"{'kernels pp':>10s} {'ratio':>6s} {'tg':>7s} {'ratio':>6s} | spread pp  tg")
    for quant, pp, tg, ((p1, t1), (p2, t2)) in rows:
        print(f"{quant:10s} {pp:11.1f} {tg:7.1f} | {p1:11.1f} {p1 / pp:6.2f} {t1:7.1f} {t1 / tg:6.2f} | "
              f"{p2:10.1f} {p2 / pp:6.2f} {t2:7.1f} {t2 / tg:6.2f} | {spread[quant][0]:9.2f} {spread[quant][1]:4.2f}")
    within = sum(0.85 <= p2 / pp <= 1.15 and 0.85 <= t2 / tg <= 1.15 for _, pp, tg, (_, (p2, t2)) in rows)
    print(f"with measured kernels: {within}/{len(rows)} builds within ±15% on both prefill and decode")
    order_meas = [q for q, *_ in sorted(rows, key=lambda r: -r[2])]
    order_pred = [q for q, *_ in sorted(rows, key=lambda r: -r[3][1][1])]
    print(f"decode ranking measured:  {' > '.join(order_meas)}\ndecode ranking predicted: {' > '.join(order_pred)}")
    print()
    return published()


if __name__ == "__main__":
    sys.exit(main())
