"""Planner predictions against `edgellm profile` on this machine, for every GGUF type: the plain
roofline from a `device measure` profile, and the per-type rates of `device measure --kernels`.

Target (issue 15): prefill and decode within ±15% of the measurement for every type.

    python benchmarks/plan_accuracy.py [WORK_DIR] [--types Q8_0,Q4_K_M,...]

Model: a random-weight Qwen2.5-0.5B shape (benchmarks/realsize_models.py); 512-token prompt,
128 generated, as the planner predicts.
"""

from __future__ import annotations

import argparse
import json
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


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("work", nargs="?", default=str(HERE.parent / ".refwork" / "plan-accuracy"))
    ap.add_argument("--types", default=",".join(TYPES))
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(HERE))
    from realsize_models import build

    from edgellm import devices, models
    from edgellm.plan import planner
    from edgellm.plan.build import BuildChoice

    model_dir = build("qwen2.5-0.5b", work / "qwen2.5-0.5b")
    plain, tuned = work / "here.toml", work / "here-kernels.toml"
    edgellm("device", "measure", "--name", "here", "-o", str(plain))
    edgellm("device", "measure", "--name", "here", "--kernels", "-o", str(tuned))
    model = models.load_config(str(model_dir))
    rows = []
    for quant in args.types.split(","):
        out = work / f"bundle-{quant}"
        if not (out / "manifest.json").exists():
            edgellm("export", str(model_dir), "--device", str(plain), "--quant", quant, "--no-verify", "-o", str(out))
        rec = json.loads(edgellm("profile", str(out), "--prompt-tokens", "512", "--gen-tokens", "128",
                                 "--repeats", "2", "--json"))
        m = rec[0]["edgellm"]["measured"]
        choice = BuildChoice("gguf", quant, "f16")
        preds = []
        for prof in (plain, tuned):
            device = devices.find(str(prof))
            budgets = planner.budgets_for(device, None, None, 1024, model)
            c = planner.evaluate_choice(model, device, budgets, choice)
            preds.append((c.estimate.prefill_tps, c.estimate.decode_tps))
        rows.append((quant, m["prefill_tps"], m["decode_tps"], preds))
    print(f"{'type':8s} {'measured pp':>11s} {'tg':>7s} | {'roofline pp':>11s} {'ratio':>6s} {'tg':>7s} {'ratio':>6s} | "
          f"{'kernels pp':>10s} {'ratio':>6s} {'tg':>7s} {'ratio':>6s}")
    for quant, pp, tg, ((p1, t1), (p2, t2)) in rows:
        print(f"{quant:8s} {pp:11.1f} {tg:7.1f} | {p1:11.1f} {p1 / pp:6.2f} {t1:7.1f} {t1 / tg:6.2f} | "
              f"{p2:10.1f} {p2 / pp:6.2f} {t2:7.1f} {t2 / tg:6.2f}")
    within = sum(0.85 <= p2 / pp <= 1.15 and 0.85 <= t2 / tg <= 1.15 for _, pp, tg, (_, (p2, t2)) in rows)
    print(f"with measured kernels: {within}/{len(rows)} types within ±15% on both prefill and decode")
    order_meas = [q for q, *_ in sorted(rows, key=lambda r: -r[2])]
    order_pred = [q for q, *_ in sorted(rows, key=lambda r: -r[3][1][1])]
    print(f"decode ranking measured:  {' > '.join(order_meas)}\ndecode ranking predicted: {' > '.join(order_pred)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
