"""The ONNX export stage: model folder + build choice in, verified bundle folder out.

load -> build the graph, converting and quantizing weights as they stream to the external data
file -> check the file loads in ONNX Runtime -> verify against the original -> package.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

from edgellm.errors import BadInput
from edgellm.exporters.io.checkpoint import open_checkpoint
from edgellm.exporters.gguf.export import ExportRequest, ExportResult, manifest_body
from edgellm.models.families import family_for
from edgellm.exporters.onnx.genai import write_genai_config
from edgellm.exporters.package import copy_tokenizer, staging, tool_versions, write_manifest
from edgellm.plan.onnx_layout import INT8_EMBED_BLOCK

MODEL_FILE = "model.onnx"
DATA_FILE = "model.onnx.data"


def _ensure_tokenizer_json(model_dir: Path, tmp: Path) -> None:
    """The ONNX runtime reads tokenizer.json; a SentencePiece-only folder gets one written by
    transformers' converter (no model code runs)."""
    if (tmp / "tokenizer.json").is_file():
        return
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(model_dir), use_fast=True, trust_remote_code=False)
        tok.backend_tokenizer.save(str(tmp / "tokenizer.json"))
    except Exception as e:                                      # noqa: BLE001 - one clear line
        raise BadInput(f"{model_dir}: no tokenizer.json and it could not be converted ({e})") from None


def _calibrated(req: ExportRequest, arch, block: int, stage):
    from edgellm.exporters.calibrate import CalibrationData
    from edgellm.exporters.onnx.gptq import calibrated_quantizer

    data = req.calibration or CalibrationData()
    cal = data.stats(req.model_dir, hessian=True, trust_remote_code=req.trust_remote_code, threads=req.threads,
                     progress=lambda i, n: stage(f"[0/3] calibrating: window {i}/{n}"))
    info = {**data.describe(cal), "method": "GPTQ (error-compensating rounding) with searched block scales"}
    return calibrated_quantizer(arch, cal.hessian, block), info


def export_onnx(req: ExportRequest, stage: Callable[[str], None] = lambda s: None,
                accuracy_level: int = 4) -> ExportResult:
    import onnx

    from edgellm.exporters.onnx.graph import QUANTS, Reader, build
    from edgellm.exporters.onnx.weights import ExternalData

    c = req.choice
    if c.format != "onnx" or c.target != "cpu" or c.quant not in QUANTS:
        raise BadInput(f"ONNX export offers {', '.join(QUANTS)}; not {c.label}")
    block = c.block_size or INT8_EMBED_BLOCK      # int8 has blocks only in its embedding table
    t0 = time.perf_counter()
    ckpt = open_checkpoint(req.model_dir, req.allow_pickle)     # all input checks before any write
    arch = family_for(req.model, "onnx")
    if not (req.model_dir / "tokenizer.json").is_file() and not (req.model_dir / "tokenizer.model").is_file():
        raise BadInput(f"{req.model_dir}: no tokenizer (tokenizer.json or tokenizer.model)")
    quantizer, cal_info = _calibrated(req, arch, block, stage) if c.calibrated else (None, None)
    with staging(req.out, req.force, needed=req.prediction.get("file_bytes")) as tmp:
        weights = ExternalData(tmp / DATA_FILE)
        try:
            model = build(arch, Reader(ckpt), weights, c.quant, block, accuracy_level,
                          int8_levels=c.int8_levels or 127, progress=lambda i, n: stage(f"[1/3] building ONNX {c.label}: step {i}/{n}"),
                          int4_quantizer=quantizer)
        finally:
            weights.close()
        onnx.helper.set_model_props(model, {"max_context": str(req.model.max_context), "quant": c.quant,
                                            "producer": "edgellm"})
        onnx.save(model, str(tmp / MODEL_FILE))
        copy_tokenizer(req.model_dir, tmp)
        _ensure_tokenizer_json(req.model_dir, tmp)
        write_genai_config(req.model, tmp, MODEL_FILE)          # onnxruntime-genai loads the bundle as is
        ops: dict[str, int] = {}
        for node in model.graph.node:
            ops[node.op_type] = ops.get(node.op_type, 0) + 1
        del model
        report = None
        if req.verify:
            from edgellm.exporters.verify.verify import verify_file
            report = verify_file(req.model_dir, c, tmp / MODEL_FILE, req.threads, req.trust_remote_code,
                            progress=lambda m: stage(f"[2/3] verifying: {m}"))
        stage("[3/3] writing the manifest")
        extra = {}
        if cal_info:
            extra["calibration"] = cal_info
        files = write_manifest(tmp, MODEL_FILE, manifest_body(req, report, operators=dict(sorted(ops.items())), **extra),
                               tool_versions(("onnx", "onnxruntime", "torch", "transformers")))
    size = files[MODEL_FILE]["bytes"] + files[DATA_FILE]["bytes"]
    return ExportResult(req.out, req.out / MODEL_FILE, size, {}, report, time.perf_counter() - t0)
