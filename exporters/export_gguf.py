"""The GGUF export stage: model folder + build choice in, verified bundle folder out.

load -> convert and quantize (streamed, tensor by tensor) -> verify -> package.  Everything is
written inside ``<out>.partial-<pid>`` next to the destination, which is renamed into place only
when the bundle is complete; an error, a full disk or Ctrl-C removes it, so nothing at the output
path ever looks finished when it is not.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from edgellm import __version__
from edgellm.errors import BadInput, EdgeLLMError
from edgellm.exporters.checkpoint import open_checkpoint
from edgellm.exporters.gguf_arch import for_model
from edgellm.exporters.gguf_vocab import read_vocab
from edgellm.exporters.gguf_write import FILE_TYPES, write_gguf
from edgellm.models.config import ModelConfig
from edgellm.plan.choice import BuildChoice
from edgellm.runtime.bundle import BUNDLE_FORMAT, BUNDLE_VERSION, MANIFEST, sha256_file
from edgellm.runtime.gguf_check import read_header

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "chat_template.jinja", "generation_config.json", "config.json")


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


@dataclass(frozen=True)
class ExportResult:
    bundle: Path
    artifact: Path
    file_bytes: int
    tensor_types: dict
    verification: dict | None
    seconds: float


def _versions() -> dict:
    import importlib.metadata as md

    out = {"edgellm": __version__}
    for pkg in ("gguf", "llama_cpp_python", "torch", "transformers"):
        try:
            out[pkg] = md.version(pkg.replace("_", "-"))
        except md.PackageNotFoundError:
            pass
    return out


def _prepare_out(req: ExportRequest) -> Path:
    if req.out.exists() and not req.force:
        raise BadInput(f"{req.out}: already exists; pass --force to replace it")
    req.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = req.out.with_name(f".{req.out.name}.partial-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    return tmp


def _swap_in(tmp: Path, out: Path) -> None:
    """Put the finished bundle at ``out``.  A bundle replaced with --force is first moved aside and
    removed only once the new one is in place, so no moment leaves neither."""
    old = None
    if out.exists() or out.is_symlink():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old) if old.is_dir() and not old.is_symlink() else old.unlink()


def export_gguf(req: ExportRequest, stage: Callable[[str], None] = lambda s: None) -> ExportResult:
    if req.choice.format != "gguf" or req.choice.quant not in FILE_TYPES:
        raise BadInput(f"GGUF export offers {', '.join(FILE_TYPES)}; not {req.choice.quant}")
    t0 = time.perf_counter()
    ckpt = open_checkpoint(req.model_dir, req.allow_pickle)     # all input checks before any write
    arch = for_model(req.model)
    vocab = read_vocab(req.model_dir, req.model.vocab)
    tmp = _prepare_out(req)
    try:
        name = f"{Path(req.model.name).name}-{req.choice.quant}.gguf"
        artifact = tmp / name
        write_gguf(req.model, ckpt, arch, vocab, req.model_dir, artifact, req.choice.quant, req.threads,
                   lambda i, n: stage(f"[1/3] converting to GGUF {req.choice.quant}: tensor {i}/{n}"))
        header = read_header(artifact)
        types: dict[str, int] = {}
        for t in header.tensors:
            types[t.type_name] = types.get(t.type_name, 0) + 1
        for fname in TOKENIZER_FILES:
            if (req.model_dir / fname).is_file():
                shutil.copyfile(req.model_dir / fname, tmp / fname)
        report = None
        if req.verify:
            from edgellm.exporters.verify_gguf import verify
            report = verify(req.model_dir, artifact, req.choice.quant, req.threads, req.trust_remote_code,
                            progress=lambda m: stage(f"[2/3] verifying: {m}"))
        stage("[3/3] writing the manifest")
        files = {p.name: {"sha256": sha256_file(p), "bytes": p.stat().st_size}
                 for p in sorted(tmp.iterdir()) if p.is_file()}
        manifest = {
            "format": BUNDLE_FORMAT, "version": BUNDLE_VERSION, "artifact": name,
            "model": {"name": req.model.name, "architecture": req.model.model_type,
                      "parameters": req.model.n_params, "source": req.model.source},
            "device": req.device, "choice": req.choice.to_dict(), "prediction": req.prediction,
            "tensor_types": dict(sorted(types.items())),
            "verification": report if report is not None else {"skipped": True},
            "files": files, "tools": _versions(),
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        _swap_in(tmp, req.out)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, OSError) and not isinstance(e, EdgeLLMError):
            raise EdgeLLMError(f"export failed writing {req.out}: {e.strerror or e}") from None
        raise
    return ExportResult(req.out, req.out / name, files[name]["bytes"], types, report,
                        time.perf_counter() - t0)
