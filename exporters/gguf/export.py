"""The GGUF export stage: model folder + build choice in, verified bundle folder out.

load -> convert and quantize (streamed, tensor by tensor) -> verify -> package (``package.staging``:
a temporary folder renamed into place only when the bundle is complete).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from edgellm.errors import BadInput
from edgellm.exporters.calibrate import CalibrationData
from edgellm.exporters.io.checkpoint import open_checkpoint
from edgellm.models.families import family_for
from edgellm.exporters.gguf.vocab import read_vocab
from edgellm.exporters.gguf.write import FILE_TYPES, write_gguf
from edgellm.exporters.package import copy_tokenizer, staging, tool_versions, write_manifest
from edgellm.models.config import ModelConfig
from edgellm.plan.build import BuildChoice
from edgellm.runtime.gguf_check import read_header


@dataclass(frozen=True)
class ExportRequest:
    model_dir: Path
    model: ModelConfig
    choice: BuildChoice
    out: Path
    device: str
    prediction: dict = field(default_factory=dict)
    verify: bool = True
    threads: int = 2
    allow_pickle: bool = False
    trust_remote_code: bool = False
    force: bool = False
    calibration: CalibrationData | None = None   # for a calibrated choice; default text if None
    source_kind: str = "local folder"            # or "hub": recorded instead of any local path


@dataclass(frozen=True)
class ExportResult:
    bundle: Path
    artifact: Path
    file_bytes: int
    tensor_types: dict
    verification: dict | None
    seconds: float


def export_gguf(req: ExportRequest, stage: Callable[[str], None] = lambda s: None) -> ExportResult:
    if req.choice.format != "gguf" or str(req.choice.quant) not in FILE_TYPES:
        raise BadInput(f"GGUF export offers {', '.join(FILE_TYPES)}; not {req.choice.quant}")
    t0 = time.perf_counter()
    ckpt = open_checkpoint(req.model_dir, req.allow_pickle)     # all input checks before any write
    arch = family_for(req.model, "gguf")
    vocab = read_vocab(req.model_dir, req.model.vocab)
    calibrated = _calibrated_types(req, ckpt, arch, stage) if req.choice.calibrated else None
    types, imatrix, compensators, cal_info = calibrated or (None, None, None, None)
    with staging(req.out, req.force, needed=req.prediction.get("file_bytes")) as tmp:
        name = f"{Path(req.model.name).name}-{req.choice.quant}{'-cal' if calibrated else ''}.gguf"
        artifact = tmp / name
        from contextlib import nullcontext

        from edgellm.exporters.compute import gpu_memory_guard

        # torch only where GPTQ runs: a plain export never imports it (1.7 s and ~200 MiB of RSS)
        guard = gpu_memory_guard(compensators.device, "GPTQ while writing the GGUF") \
            if compensators is not None else nullcontext()
        with guard:
            write_gguf(req.model, ckpt, arch, vocab, req.model_dir, artifact, req.choice.quant, req.threads,
                       lambda i, n: stage(f"[1/3] converting to GGUF {req.choice.quant}: tensor {i}/{n}"),
                       types=types, imatrix=imatrix, compensators=compensators)
        header = read_header(artifact)
        counts: dict[str, int] = {}
        for t in header.tensors:
            counts[t.type_name] = counts.get(t.type_name, 0) + 1
        copy_tokenizer(req.model_dir, tmp)
        report = None
        if req.verify:
            from edgellm.exporters.verify.verify import verify_file
            report = verify_file(req.model_dir, req.choice, artifact, req.threads, req.trust_remote_code,
                            progress=lambda m: stage(f"[2/3] verifying: {m}"))
        stage("[3/3] writing the manifest")
        extra = {"calibration": cal_info} if cal_info else {}
        files = write_manifest(tmp, name, manifest_body(req, report, tensor_types=dict(sorted(counts.items())),
                                                        **extra),
                               tool_versions(("gguf", "llama_cpp_python", "torch", "transformers")))
    return ExportResult(req.out, req.out / name, files[name]["bytes"], counts, report,
                        time.perf_counter() - t0)


def _calibrated_types(req: ExportRequest, ckpt, arch, stage) -> tuple:
    """Calibration statistics -> (type per tensor, importance matrix per tensor, GPTQ compensators,
    manifest record)."""
    from edgellm.exporters.gguf.mix import Costs, calibrated_gguf

    def sink(cal):                  # each tensor's Fisher into its costs as it comes: never all at once
        cal.costs = Costs(req.model, ckpt, arch, cal.imatrix, req.threads)
        return cal.costs

    data = req.calibration or CalibrationData()
    cal = data.stats(req.model_dir, hessian=True, fisher=True, ckpt=ckpt, sink=sink,
                     trust_remote_code=req.trust_remote_code,
                     threads=req.threads, progress=lambda i, n: stage(f"[0/3] calibrating a layer at a time: {i}/{n}"))
    c = calibrated_gguf(req.model, ckpt, arch, req.choice.quant, cal, req.threads,
                        progress=lambda i, n: stage(f"[0/3] measuring each tensor's sensitivity: {i}/{n}"))
    from edgellm.exporters.compute import peak_gpu_bytes
    from edgellm.runtime.profiling import peak_rss_bytes

    need = req.prediction.get("calibration")
    info = {**data.describe(cal), **({"predicted_need": need} if need else {}),
            "peak_rss_bytes_so_far": peak_rss_bytes(), "peak_gpu_bytes": peak_gpu_bytes(cal.device), "method": "Fisher-sensitivity mixed types at the recipe's bytes; ggml's "
            "quantizers with importance weights and GPTQ error compensation between column blocks",
            "mix": c.mix.to_dict()}
    return c.mix.types, c.imatrix, c.compensators, info


def manifest_body(req: ExportRequest, report: dict | None, **extra) -> dict:
    return {
        "model": {"name": req.model.name, "architecture": req.model.model_type,
                  "parameters": req.model.n_params, "source": req.source_kind},
        "device": req.device, "choice": req.choice.to_dict(), "prediction": req.prediction, **extra,
        "verification": report if report is not None else {"skipped": True},
    }
