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
from edgellm.exporters.checkpoint import open_checkpoint
from edgellm.exporters.gguf_arch import for_model
from edgellm.exporters.gguf_vocab import read_vocab
from edgellm.exporters.gguf_write import FILE_TYPES, write_gguf
from edgellm.exporters.package import copy_tokenizer, staging, tool_versions, write_manifest
from edgellm.models.config import ModelConfig
from edgellm.plan.choice import BuildChoice
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
    int8_weight_levels: int = 127     # ONNX int8: 63 for x86 CPUs without VNNI (see onnx_weights)


@dataclass(frozen=True)
class ExportResult:
    bundle: Path
    artifact: Path
    file_bytes: int
    tensor_types: dict
    verification: dict | None
    seconds: float


def export_gguf(req: ExportRequest, stage: Callable[[str], None] = lambda s: None) -> ExportResult:
    if req.choice.format != "gguf" or req.choice.quant not in FILE_TYPES:
        raise BadInput(f"GGUF export offers {', '.join(FILE_TYPES)}; not {req.choice.quant}")
    t0 = time.perf_counter()
    ckpt = open_checkpoint(req.model_dir, req.allow_pickle)     # all input checks before any write
    arch = for_model(req.model)
    vocab = read_vocab(req.model_dir, req.model.vocab)
    with staging(req.out, req.force) as tmp:
        name = f"{Path(req.model.name).name}-{req.choice.quant}.gguf"
        artifact = tmp / name
        write_gguf(req.model, ckpt, arch, vocab, req.model_dir, artifact, req.choice.quant, req.threads,
                   lambda i, n: stage(f"[1/3] converting to GGUF {req.choice.quant}: tensor {i}/{n}"))
        header = read_header(artifact)
        types: dict[str, int] = {}
        for t in header.tensors:
            types[t.type_name] = types.get(t.type_name, 0) + 1
        copy_tokenizer(req.model_dir, tmp)
        report = None
        if req.verify:
            from edgellm.exporters.verify import verify
            report = verify(req.model_dir, artifact, req.choice.quant, req.threads, req.trust_remote_code,
                            progress=lambda m: stage(f"[2/3] verifying: {m}"))
        stage("[3/3] writing the manifest")
        files = write_manifest(tmp, name, manifest_body(req, report, tensor_types=dict(sorted(types.items()))),
                               tool_versions(("gguf", "llama_cpp_python", "torch", "transformers")))
    return ExportResult(req.out, req.out / name, files[name]["bytes"], types, report,
                        time.perf_counter() - t0)


def manifest_body(req: ExportRequest, report: dict | None, **extra) -> dict:
    return {
        "model": {"name": req.model.name, "architecture": req.model.model_type,
                  "parameters": req.model.n_params, "source": req.model.source},
        "device": req.device, "choice": req.choice.to_dict(), "prediction": req.prediction, **extra,
        "verification": report if report is not None else {"skipped": True},
    }
