"""The NPU export stage (devices whose plan runs the build on a QNN NPU): a fixed-shape static QDQ
ONNX model, checked operator by operator against the QNN provider, run on the CPU provider, and on
the QNN HTP backend when onnxruntime-qnn is installed.  Verification, manifest and staging are the
stages' (exporters/stages.py), as for every format.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from edgellm.errors import BadInput
from edgellm.exporters.io.checkpoint import open_checkpoint
from edgellm.textdata import text_ids
from edgellm.exporters.stages import ExportRequest, ExportResult, Opened, Writer, Written, run_export
from edgellm.models.families import family_for

MODEL_FILE = "model.onnx"
CALIBRATION_WINDOWS = 24


def _calibration_ids(model_dir: Path, text: str) -> list[int]:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir), trust_remote_code=False)
    return text_ids(tok, text)


class NpuWriter(Writer):
    """The static NPU build's part of the export (exporters/stages.py runs the stages): the float
    graph, its static QDQ quantization, the QNN operator check and the run on the providers."""
    tools = ("onnx", "onnxruntime", "onnxruntime_qnn", "torch", "transformers")
    write_steps = 3
    seq = 32
    calibration_text: str | None = None

    def open(self, req: ExportRequest, tokenizer) -> Opened:
        from edgellm.exporters.npu.qdq import WEIGHT_BITS
        from edgellm.textdata import training_text

        c = req.choice
        if c.target != "npu-static" or c.quant not in WEIGHT_BITS:
            raise BadInput(f"the NPU build takes int8 or int4 weights (16-bit activations); not {c.label}")
        ckpt = open_checkpoint(req.model_dir, req.allow_pickle)
        arch = family_for(req.model, "onnx-npu")
        ctx = min(int(req.prediction.get("context") or 1024), req.model.max_context)
        # calibration text never overlaps the held-out text verification scores on
        text = self.calibration_text or (req.calibration.text if req.calibration and req.calibration.text else None)
        ids = _calibration_ids(req.model_dir, text or training_text(64 << 10))
        return Opened(ckpt, arch, {"context": ctx, "ids": ids})

    def staging_bytes(self, req: ExportRequest) -> int | None:
        # the float graph is written beside the quantized one while it is calibrated
        return (req.prediction.get("file_bytes") or 0) + 4 * req.model.n_params

    def write(self, req, opened, calibrated, tmp, report) -> Written:
        import onnx
        import onnxruntime as ort

        from edgellm.exporters.npu.qdq import calibration_feeds, quantize_static, run_on_qnn, unsupported_nodes
        from edgellm.exporters.npu.static_graph import build_static
        from edgellm.exporters.onnx.graph import Reader

        c, seq, ctx = req.choice, self.seq, opened.extra["context"]
        report.say(f"building the fixed-shape graph ({seq} tokens per step, context {ctx})", 1)
        float_path = tmp / "float.onnx"
        onnx.save(build_static(opened.arch, Reader(opened.checkpoint), seq, ctx), str(float_path),
                  save_as_external_data=True, location="float.onnx.data", size_threshold=1024)
        feeds = calibration_feeds(float_path, opened.extra["ids"], CALIBRATION_WINDOWS)
        report.say(f"static QDQ quantization: {c.quant} weights, 16-bit activations calibrated on "
                   f"{CALIBRATION_WINDOWS} x {seq} tokens", 2)
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
        report.say("running it: CPU provider against the float graph; QNN HTP when installed", 3)
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
        sized = tuple(sorted(p.name for p in tmp.iterdir() if p.name.startswith("model.onnx")))
        return Written(MODEL_FILE, sized, {"operators": dict(sorted(ops.items())), "npu": npu})

    def verify(self, req, tmp, written, progress) -> dict:
        from edgellm.exporters.verify.verify import verify_candidate
        from edgellm.runtime.onnx_static import StaticOnnxModel

        ctx = min(int(req.prediction.get("context") or 1024), req.model.max_context)
        return verify_candidate(req.model_dir, StaticOnnxModel(tmp / written.artifact, req.threads, provider="cpu"),
                                MODEL_FILE, "onnxruntime (CPU provider, static QDQ)", None, req.trust_remote_code,
                                min(512, ctx - self.seq), progress)


def export_npu(req: ExportRequest, stage: Callable[[str], None] = lambda s: None, seq: int = 32,
               calibration_text: str | None = None) -> ExportResult:
    """Model folder + build choice in, verified bundle folder out (the stages of
    exporters/stages.py with the NPU writer); ``stage`` gets each progress line."""
    writer = NpuWriter()
    writer.seq, writer.calibration_text = seq, calibration_text
    return run_export(writer, req, lambda p: stage(str(p)))
