"""ONNX int8: edgellm's export (DynamicQuantizeMatMul written directly) against ONNX Runtime's own
path, fp32 export + quantize_dynamic(per_channel), on the same model in the same run: export wall
time and peak RSS, then prefill/decode through the same runtime loop (alternating, best of 2).

Usage: python benchmarks/onnx_int8_kernels.py WORK_DIR [qwen2.5-0.5b|llama-3.2-1b] [--threads N]
"""

from __future__ import annotations

import json
import shutil
import subprocess

from peer_run import EDGELLM, PY, parse_args, timed

QUANTIZE = """
import sys, onnx
from onnxruntime.quantization import quantize_dynamic, QuantType
quantize_dynamic(sys.argv[1], sys.argv[2], weight_type=QuantType.QInt8, per_channel=True,
                 use_external_data_format=True, extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
"""
PROFILE = """
import json, sys
from edgellm.runtime.onnxrt import OnnxModel
p = OnnxModel(sys.argv[1], threads=int(sys.argv[2])).profile(128, 64, 3)
print(json.dumps({"prefill": p.prefill_tps, "decode": p.decode_tps, "rss": p.peak_rss_bytes}))
"""


def profile(folder, threads: int) -> dict:
    out = subprocess.run([PY, "-c", PROFILE, str(folder / "model.onnx"), str(threads)], check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    a, model = parse_args()
    ours, fp32, dyn = (a.work / f"{a.shape}-int8-{k}" for k in ("ours", "fp32", "dynamic"))
    for d in (ours, fp32, dyn):
        shutil.rmtree(d, ignore_errors=True)
    export = [EDGELLM, "export", str(model), "--device", "laptop-x86-16gb", "--format", "onnx", "--no-verify",
              "--threads", str(a.threads)]
    t_ours, m_ours = timed(export + ["--quant", "int8", "-o", str(ours)], a.work / "int8-ours.log")
    t_fp32, m_fp32 = timed(export + ["--quant", "fp32", "-o", str(fp32)], a.work / "int8-fp32.log")
    shutil.copytree(fp32, dyn, ignore=shutil.ignore_patterns("model.onnx*"))
    t_dyn, m_dyn = timed([PY, "-c", QUANTIZE, str(fp32 / "model.onnx"), str(dyn / "model.onnx")],
                         a.work / "int8-dynamic.log")
    best = {"ours": [0.0, 0.0], "dyn": [0.0, 0.0]}
    for _ in range(2):
        for key, folder in (("dyn", dyn), ("ours", ours)):
            r = profile(folder, a.threads)
            best[key] = [max(best[key][0], r["prefill"]), max(best[key][1], r["decode"])]
    print(f"## {a.shape}: ONNX int8, {a.threads} threads (prefill of 128, decode of 64; best of 2 alternating rounds, each a median of 3)")
    print(f"edgellm int8 (DynamicQuantizeMatMul)     export {t_ours:6.1f} s {m_ours / 2**30:5.2f} GiB   "
          f"prefill {best['ours'][0]:6.1f}  decode {best['ours'][1]:5.1f} tok/s")
    print(f"fp32 export + quantize_dynamic           export {t_fp32 + t_dyn:6.1f} s {max(m_fp32, m_dyn) / 2**30:5.2f} GiB   "
          f"prefill {best['dyn'][0]:6.1f}  decode {best['dyn'][1]:5.1f} tok/s")
    print(f"ratio                                    wall {t_ours / (t_fp32 + t_dyn):.2f}x  RSS {m_ours / max(m_fp32, m_dyn):.2f}x   "
          f"prefill {best['ours'][0] / best['dyn'][0]:.2f}x  decode {best['ours'][1] / best['dyn'][1]:.2f}x")


if __name__ == "__main__":
    main()
