"""The NPU export stage (devices whose plan runs the build on a QNN NPU): a fixed-shape static QDQ
ONNX model, checked operator by operator against the QNN provider, run on the CPU provider, and on
the QNN HTP backend when onnxruntime-qnn is installed; then verified and packaged like any bundle.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import numpy as np

from edgellm.errors import BadInput
from edgellm.exporters.io.checkpoint import open_checkpoint
from edgellm.exporters.gguf.export import ExportRequest, ExportResult, manifest_body
from edgellm.models.families import family_for
from edgellm.exporters.package import copy_tokenizer, staging, tool_versions, write_manifest

MODEL_FILE = "model.onnx"
CALIBRATION_WINDOWS = 24


def _calibration_ids(model_dir: Path, text: str) -> list[int]:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir), trust_remote_code=False)
    return tok.encode(text, add_special_tokens=False)


def export_npu(req: ExportRequest, stage: Callable[[str], None] = lambda s: None, seq: int = 32,
               calibration_text: str | None = None) -> ExportResult:
    import onnx
    import onnxruntime as ort

    from edgellm.exporters.onnx.graph import Reader
    from edgellm.exporters.npu.qdq import (WEIGHT_BITS, calibration_feeds, quantize_static, run_on_qnn,
                                            unsupported_nodes)
    from edgellm.exporters.npu.static_graph import build_static
    from edgellm.textdata import training_text

    c = req.choice
    if c.target != "npu-static" or c.quant not in WEIGHT_BITS:
        raise BadInput(f"the NPU build takes int8 or int4 weights (16-bit activations); not {c.label}")
    t0 = time.perf_counter()
    ckpt = open_checkpoint(req.model_dir, req.allow_pickle)
    arch = family_for(req.model, "onnx-npu")
    ctx = min(int(req.prediction.get("context") or 1024), req.model.max_context)
    # calibration text never overlaps the held-out text verification scores on
    text = calibration_text or (req.calibration.text if req.calibration and req.calibration.text else None)
    ids = _calibration_ids(req.model_dir, text or training_text(64 << 10))
    # the float graph is written beside the quantized one while it is calibrated
    needed = (req.prediction.get("file_bytes") or 0) + 4 * req.model.n_params
    with staging(req.out, req.force, needed=needed) as tmp:
        stage(f"[1/4] building the fixed-shape graph ({seq} tokens per step, context {ctx})")
        float_path = tmp / "float.onnx"
        onnx.save(build_static(arch, Reader(ckpt), seq, ctx), str(float_path), save_as_external_data=True,
                  location="float.onnx.data", size_threshold=1024)
        feeds = calibration_feeds(float_path, ids, CALIBRATION_WINDOWS)
        stage(f"[2/4] static QDQ quantization: {c.quant} weights, 16-bit activations calibrated on "
              f"{CALIBRATION_WINDOWS} x {seq} tokens")
        out = tmp / MODEL_FILE
        quantize_static(float_path, out, feeds, c.quant)
        graph = onnx.load(str(out), load_external_data=False)
        bad = unsupported_nodes(graph)
        if bad:
            raise BadInput(f"{len(bad)} node(s) the QNN provider does not support: {', '.join(bad[:10])}")
        ops: dict[str, int] = {}
        for node in graph.graph.node:
            ops[node.op_type] = ops.get(node.op_type, 0) + 1
        del graph
        stage("[3/4] running it: CPU provider against the float graph; QNN HTP when installed")
        probe = feeds[len(feeds) // 2 + 1]            # a step with a filled cache
        ref = ort.InferenceSession(str(float_path), providers=["CPUExecutionProvider"]).run(["logits"], probe)[0]
        got = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(["logits"], probe)[0]
        qnn_status, qnn_out = run_on_qnn(out, probe)
        npu = {"static_shapes": {"tokens_per_step": seq, "context": ctx},
               "activations": "uint16 QDQ (min/max calibration)", "weights": f"{c.quant} per output channel, symmetric",
               "qnn_supported_ops": f"all {sum(ops.values())} nodes",
               "cpu_provider_vs_float": {"max_abs_logit_diff": float(np.abs(got - ref).max()),
                                         "top1_agreement": float((got.argmax(-1) == ref.argmax(-1)).mean())},
               "qnn_htp": qnn_status}
        if qnn_out is not None:
            npu["qnn_htp_vs_cpu_provider"] = {"max_abs_logit_diff": float(np.abs(qnn_out[0] - got).max()),
                                              "top1_agreement": float((qnn_out[0].argmax(-1) == got.argmax(-1)).mean())}
        for p in (float_path, tmp / "float.onnx.data"):
            p.unlink(missing_ok=True)
        copy_tokenizer(req.model_dir, tmp)
        report = None
        if req.verify:
            from edgellm.exporters.verify.verify import verify_candidate
            from edgellm.runtime.onnx_static import StaticOnnxModel

            report = verify_candidate(req.model_dir, StaticOnnxModel(out, req.threads, provider="cpu"), MODEL_FILE,
                                      "onnxruntime (CPU provider, static QDQ)", None, req.trust_remote_code,
                                      min(512, ctx - seq), lambda msg: stage(f"[4/4] verifying: {msg}"))
        files = write_manifest(tmp, MODEL_FILE, manifest_body(req, report, operators=dict(sorted(ops.items())),
                                                              npu=npu),
                               tool_versions(("onnx", "onnxruntime", "onnxruntime_qnn", "torch", "transformers")))
    size = sum(f["bytes"] for name, f in files.items() if name.startswith("model.onnx"))
    return ExportResult(req.out, req.out / MODEL_FILE, size, {}, report, time.perf_counter() - t0)
