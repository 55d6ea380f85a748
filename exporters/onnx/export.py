"""ONNX's writer: build the graph, converting and quantizing weights as they stream to the external
data file; the tokenizer.json and genai_config.json onnxruntime-genai reads.  The stages around it
(staging, verification, manifest) are exporters/stages.py's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from edgellm.errors import BadInput
from edgellm.exporters.io.checkpoint import open_checkpoint
from edgellm.exporters.onnx.genai import write_genai_config
from edgellm.exporters.stages import (Calibrated, ExportRequest, ExportResult, Opened, StepReport, Writer, Written,
                                      run_export)
from edgellm.formats.onnx_layout import INT8_EMBED_BLOCK
from edgellm.models.families import family_for

MODEL_FILE = "model.onnx"
DATA_FILE = "model.onnx.data"


class OnnxWriter(Writer):
    """ONNX's part of the export (exporters/stages.py runs the stages)."""
    tools = ("onnx", "onnxruntime", "torch", "transformers")
    accuracy_level = 4

    def open(self, req: ExportRequest, tokenizer) -> Opened:
        from edgellm.exporters.onnx.graph import QUANTS

        c = req.choice
        if c.format != "onnx" or c.target != "cpu" or c.quant not in QUANTS:
            raise BadInput(f"ONNX export offers {', '.join(QUANTS)}; not {c.label}")
        ckpt = open_checkpoint(req.model_dir, req.allow_pickle)     # all input checks before any write
        arch = family_for(req.model, "onnx")
        from edgellm.formats import format_for

        if problem := format_for(c).choice_problem(req.model, c):
            raise BadInput(problem)
        if not (req.model_dir / "tokenizer.json").is_file() and not (req.model_dir / "tokenizer.model").is_file():
            raise BadInput(f"{req.model_dir}: no tokenizer (tokenizer.json or tokenizer.model)")
        return Opened(ckpt, arch, {"block": c.block_size or INT8_EMBED_BLOCK})  # int8: blocks only in the embedding

    def calibrate(self, req: ExportRequest, opened: Opened, report: StepReport) -> Calibrated:
        from edgellm.exporters.calibrate import CalibrationData
        from edgellm.exporters.onnx.gptq import calibrated_quantizer

        data = req.calibration or CalibrationData()
        cal = data.stats(req.model_dir, hessian=True, trust_remote_code=req.trust_remote_code, threads=req.threads,
                         progress=lambda i, n: report.count(i, n, "calibrating: window"))
        info = {**data.describe(cal), "method": "GPTQ (error-compensating rounding) with searched block scales"}
        return Calibrated(calibrated_quantizer(opened.arch, cal.hessian, opened.extra["block"]), info)

    def write(self, req, opened, calibrated, tmp, report) -> Written:
        import onnx

        from edgellm.exporters.onnx.graph import Reader, build
        from edgellm.exporters.onnx.weights import ExternalData

        c = req.choice
        weights = ExternalData(tmp / DATA_FILE)
        try:
            model = build(opened.arch, Reader(opened.checkpoint), weights, c.quant, opened.extra["block"],
                          self.accuracy_level, int8_levels=c.int8_levels or 127,
                          progress=lambda i, n: report.count(i, n, f"building ONNX {c.label}: step"),
                          int4_quantizer=calibrated.state if calibrated else None)
        finally:
            weights.close()
        onnx.helper.set_model_props(model, {"max_context": str(req.model.max_context), "quant": c.quant,
                                            "producer": "edgellm"})
        onnx.save(model, str(tmp / MODEL_FILE))
        ops: dict[str, int] = {}
        for node in model.graph.node:
            ops[node.op_type] = ops.get(node.op_type, 0) + 1
        return Written(MODEL_FILE, (MODEL_FILE, DATA_FILE), {"operators": dict(sorted(ops.items()))})

    def tokenizer(self, req: ExportRequest, tmp: Path, tokenizer) -> None:
        super().tokenizer(req, tmp, tokenizer)
        if not (tmp / "tokenizer.json").is_file():                     # a SentencePiece-only folder
            if tokenizer.json_text is None:
                raise BadInput(f"{req.model_dir}: no tokenizer.json, and transformers has no fast tokenizer "
                               "to convert it to (ONNX Runtime reads tokenizer.json)")
            (tmp / "tokenizer.json").write_text(tokenizer.json_text)
        write_genai_config(req.model, tmp, MODEL_FILE)          # onnxruntime-genai loads the bundle as is


def export_onnx(req: ExportRequest, stage: Callable[[str], None] = lambda s: None,
                accuracy_level: int = 4) -> ExportResult:
    """Model folder + build choice in, verified bundle folder out (the stages of
    exporters/stages.py with ONNX's writer); ``stage`` gets each progress line."""
    writer = OnnxWriter()
    writer.accuracy_level = accuracy_level
    return run_export(writer, req, lambda p: stage(str(p)))
