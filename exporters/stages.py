"""The export's stages, owned here once: tokenizer source -> open -> calibrate -> write -> tokenizer -> verify -> manifest.

A format brings a ``Writer`` (its registry entry's ``exporter``) that does only what is its own:
open its input with every check made before anything is written, calibrate, write the artifact
into the staging folder, and say which runtime verifies it.  Staging (a temporary folder renamed
into place only when the bundle is complete), the tokenizer, verification, the manifest and the
result are the pipeline's, the same for every format (Olive's pass contract: each stage takes a
typed value and returns one).  Progress goes to a callback as ``Progress`` events, never to a
stream.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from edgellm.formats.choice import BuildChoice
from edgellm.models.config import ModelConfig


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
    calibration: object | None = None            # CalibrationData for a calibrated choice; default text if None
    source_kind: str = "local folder"            # or "hub": recorded instead of any local path


@dataclass(frozen=True)
class ExportResult:
    bundle: Path
    artifact: Path
    file_bytes: int
    tensor_types: dict
    verification: dict | None
    seconds: float


@dataclass(frozen=True)
class Progress:
    """One step of a stage: ``str()`` is the line a terminal shows ("[1/3] converting to GGUF
    Q4_K_M: tensor 7/290"); ``stage`` is the stage's name, ``done``/``total`` its count when it
    has one."""
    stage: str
    step: str                   # "1/3": where the stage sits among the export's numbered steps
    message: str
    done: int | None = None
    total: int | None = None

    def __str__(self) -> str:
        return f"[{self.step}] {self.message}"


ProgressFn = Callable[[Progress], None]


class StepReport:
    """What a stage hands its worker to report with: ``count(i, n, what)`` for a counted step
    ("converting to GGUF Q4_K_M: tensor" 7 of 290), ``say(message, at)`` for a step of its own
    (``at``: its number among the export's steps, when the stage spans several)."""

    def __init__(self, emit: ProgressFn, stage: str, at: int, steps: int):
        self.emit, self.stage, self.at, self.steps = emit, stage, at, steps

    def count(self, i: int, total: int, what: str) -> None:
        self.emit(Progress(self.stage, f"{self.at}/{self.steps}", f"{what} {i}/{total}", i, total))

    def say(self, message: str, at: int | None = None) -> None:
        self.emit(Progress(self.stage, f"{self.at if at is None else at}/{self.steps}", message))


@dataclass
class Opened:
    """The open stage's output: the format's readers, every input check passed."""
    checkpoint: object
    arch: object
    extra: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Calibrated:
    """The calibrate stage's output: the writer's own state and the manifest's record of it."""
    state: object
    record: dict


@dataclass(frozen=True)
class Written:
    """The write stage's output: the artifact's file name in the bundle, the files whose bytes
    make the build's size (the artifact's when empty), the format's manifest sections, and the
    sha256 of files the writer hashed as it wrote them (file name -> hex digest)."""
    artifact: str
    sized_files: tuple[str, ...] = ()
    manifest: dict = field(default_factory=dict)
    tensor_types: dict = field(default_factory=dict)
    sha256: dict = field(default_factory=dict)


class Writer:
    """A format's part of the export.  Subclasses set ``tools`` and ``steps`` and implement
    ``open`` and ``write``; ``calibrate`` and ``verify`` have defaults."""
    tools: tuple[str, ...] = ()                  # packages whose versions the manifest records
    write_steps: int = 1                         # numbered steps the write stage spans (then verify, manifest)

    def source_tokenizer(self, req: ExportRequest):
        """The tokenizer transformers runs for the model (exporters/io/tokenizer_source.py): what
        ``open`` converts and ``tokenizer`` ships."""
        from edgellm.exporters.io.tokenizer_source import effective_tokenizer

        return effective_tokenizer(req.model_dir, req.trust_remote_code)

    def open(self, req: ExportRequest, tokenizer) -> Opened:
        raise NotImplementedError

    def calibrate(self, req: ExportRequest, opened: Opened, report: StepReport) -> Calibrated:
        raise NotImplementedError(f"{req.choice.label} has no calibrated form")

    def staging_bytes(self, req: ExportRequest) -> int | None:
        """Free space the staging folder needs (checked before any write)."""
        return req.prediction.get("file_bytes")

    def write(self, req: ExportRequest, opened: Opened, calibrated: Calibrated | None, tmp: Path,
              report: StepReport) -> Written:
        raise NotImplementedError

    def tokenizer(self, req: ExportRequest, tmp: Path, tokenizer) -> None:
        """The tokenizer files the runtime reads, beside the artifact; tokenizer.json as
        transformers runs it where that differs from the folder's file."""
        from edgellm.exporters.package import copy_tokenizer

        copy_tokenizer(req.model_dir, tmp)
        if tokenizer.differs and tokenizer.json_text is not None:
            (tmp / "tokenizer.json").write_text(tokenizer.json_text)

    def verify(self, req: ExportRequest, tmp: Path, written: Written, progress: Callable[[str], None]) -> dict:
        """The artifact through the runtime backend its format names, against the original."""
        from edgellm.exporters.verify.verify import verify_file

        return verify_file(req.model_dir, req.choice, tmp / written.artifact, req.threads, req.trust_remote_code,
                           progress=progress)


def manifest_body(req: ExportRequest, report: dict | None, **extra) -> dict:
    return {
        "model": {"name": req.model.name, "architecture": req.model.model_type,
                  "parameters": req.model.n_params, "source": req.source_kind},
        "device": req.device, "choice": req.choice.to_dict(), "prediction": req.prediction, **extra,
        "verification": report if report is not None else {"skipped": True},
    }


def run_export(writer: Writer, req: ExportRequest, progress: ProgressFn = lambda p: None) -> ExportResult:
    """The stages in order for one build; a failure at any stage leaves nothing at ``req.out``
    (staging), and the input checks of ``open`` come before any write."""
    from edgellm.exporters.package import staging, tool_versions, write_manifest

    n = writer.write_steps + 2
    t0 = time.perf_counter()
    tokenizer = writer.source_tokenizer(req)
    opened = writer.open(req, tokenizer)
    calibrated = None
    if req.choice.calibrated:
        calibrated = writer.calibrate(req, opened, StepReport(progress, "calibrate", 0, n))
    with staging(req.out, req.force, needed=writer.staging_bytes(req)) as tmp:
        written = writer.write(req, opened, calibrated, tmp, StepReport(progress, "write", 1, n))
        writer.tokenizer(req, tmp, tokenizer)
        report = None
        if req.verify:
            report = writer.verify(req, tmp, written, lambda m: progress(Progress("verify", f"{n - 1}/{n}",
                                                                                  f"verifying: {m}")))
        progress(Progress("manifest", f"{n}/{n}", "writing the manifest"))
        extra = dict(written.manifest)
        if tokenizer.differs:
            extra["tokenizer"] = tokenizer.record()
        if calibrated is not None:
            extra["calibration"] = calibrated.record
        files = write_manifest(tmp, written.artifact, manifest_body(req, report, **extra),
                               tool_versions(writer.tools), known=written.sha256)
    size = sum(files[f]["bytes"] for f in (written.sized_files or (written.artifact,)))
    return ExportResult(req.out, req.out / written.artifact, size, written.tensor_types, report,
                        time.perf_counter() - t0)
