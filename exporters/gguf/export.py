"""GGUF's writer: open the checkpoint and vocabulary, calibrate (Fisher-sensitivity mixed types,
importance matrices, GPTQ), convert and quantize tensor by tensor into the staging folder.  The
stages around it (staging, tokenizer, verification, manifest) are exporters/stages.py's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from edgellm.errors import BadInput
from edgellm.exporters.calibrate import CalibrationData
from edgellm.exporters.gguf.vocab import read_vocab
from edgellm.exporters.gguf.write import FILE_TYPES, write_gguf
from edgellm.exporters.io.checkpoint import open_checkpoint
from edgellm.exporters.stages import (Calibrated, ExportRequest, ExportResult, Opened, StepReport, Writer, Written,
                                      manifest_body, run_export)
from edgellm.models.families import family_for
from edgellm.runtime.gguf_check import read_header

__all__ = ["ExportRequest", "ExportResult", "GgufWriter", "export_gguf", "manifest_body"]


class GgufWriter(Writer):
    """GGUF's part of the export (exporters/stages.py runs the stages)."""
    tools = ("gguf", "llama_cpp_python", "torch", "transformers")

    def open(self, req: ExportRequest, tokenizer) -> Opened:
        if req.choice.format != "gguf" or str(req.choice.quant) not in FILE_TYPES:
            raise BadInput(f"GGUF export offers {', '.join(FILE_TYPES)}; not {req.choice.quant}")
        ckpt = open_checkpoint(req.model_dir, req.allow_pickle)     # all input checks before any write
        arch = family_for(req.model, "gguf")
        pipeline = tokenizer.pipeline() if tokenizer.differs else None      # what transformers runs
        return Opened(ckpt, arch, {"vocab": read_vocab(req.model_dir, req.model.vocab, pipeline)})

    def calibrate(self, req: ExportRequest, opened: Opened, report: StepReport) -> Calibrated:
        return _calibrated_types(req, opened.checkpoint, opened.arch, report)

    def write(self, req, opened, calibrated, tmp, report) -> Written:
        from contextlib import nullcontext

        types, imatrix, compensators = calibrated.state if calibrated else (None, None, None)
        name = f"{Path(req.model.name).name}-{req.choice.quant}{'-cal' if calibrated else ''}.gguf"
        artifact = tmp / name
        # torch only where GPTQ runs: a plain export never imports it (1.7 s and ~200 MiB of RSS)
        if compensators is not None:
            from edgellm.exporters.compute import gpu_memory_guard
            guard = gpu_memory_guard(compensators.device, "GPTQ while writing the GGUF")
        else:
            guard = nullcontext()
        with guard:
            digest = write_gguf(req.model, opened.checkpoint, opened.arch, opened.extra["vocab"], req.model_dir,
                                artifact, req.choice.quant, req.threads,
                                lambda i, n: report.count(i, n, f"converting to GGUF {req.choice.quant}: tensor"),
                                types=types, imatrix=imatrix, compensators=compensators)
        counts: dict[str, int] = {}
        for t in read_header(artifact).tensors:
            counts[t.type_name] = counts.get(t.type_name, 0) + 1
        counts = dict(sorted(counts.items()))
        return Written(name, manifest={"tensor_types": counts}, tensor_types=counts,
                       sha256={name: digest} if digest else {})


def export_gguf(req: ExportRequest, stage: Callable[[str], None] = lambda s: None) -> ExportResult:
    """Model folder + build choice in, verified bundle folder out (the stages of
    exporters/stages.py with GGUF's writer); ``stage`` gets each progress line."""
    return run_export(GgufWriter(), req, lambda p: stage(str(p)))


def _calibrated_types(req: ExportRequest, ckpt, arch, report: StepReport) -> Calibrated:
    """Calibration statistics -> (type per tensor, importance matrix per tensor, GPTQ compensators)
    and the manifest's record."""
    from edgellm.exporters.gguf.mix import Costs, calibrated_gguf
    from edgellm.exporters.gguf.write import plan_tensors

    plan_tensors(req.model, ckpt, arch, req.choice.quant)   # a missing or misshapen tensor: refused before calibrating

    def sink(cal):                  # each tensor's Fisher into its costs as it comes: never all at once
        cal.costs = Costs(req.model, ckpt, arch, cal.imatrix, req.threads,
                          background=str(cal.device).startswith("cuda"), phases=cal.phases)
        return cal.costs

    data = req.calibration or CalibrationData()
    cal = data.stats(req.model_dir, hessian=True, fisher=True, ckpt=ckpt, sink=sink,
                     trust_remote_code=req.trust_remote_code, parts=arch.checkpoint_parts,
                     threads=req.threads, progress=lambda i, n: report.count(i, n, "calibrating a layer at a time:"))
    c = calibrated_gguf(req.model, ckpt, arch, req.choice.quant, cal, req.threads,
                        progress=lambda i, n: report.count(i, n, "measuring each tensor's sensitivity:"))
    from edgellm.exporters.compute import peak_gpu_bytes
    from edgellm.runtime.profiling import peak_rss_bytes

    need = req.prediction.get("calibration")
    info = {**data.describe(cal), **({"predicted_need": need} if need else {}),
            "peak_rss_bytes_so_far": peak_rss_bytes(), "peak_gpu_bytes": peak_gpu_bytes(cal.device), "method": "Fisher-sensitivity mixed types at the recipe's bytes; ggml's "
            "quantizers with importance weights and GPTQ error compensation between column blocks",
            "mix": c.mix.to_dict()}
    if cal.experts:
        info["method"] += ("; a mixture's experts keep the recipe's types and are rounded by ggml with each "
                           "expert's own importance weights (no GPTQ: one XᵀX per expert would be 128 per layer)")
    return Calibrated((c.mix.types, c.imatrix, c.compensators), info)

