"""What a build format declares about itself: the ``BuildFormat`` base class.

Each format says which builds it offers on a device, which are valid, what their weights weigh and
what the runtime reads per token, the KV cache element size, the expected quality, how strictly
verification compares it, which exporter writes it and which runtime backend runs it.  Nothing
outside the format classes dispatches on format or quant names.
"""

from __future__ import annotations

from collections import Counter
from typing import ClassVar

from edgellm.formats.choice import BuildChoice, Target
from edgellm.models.config import ModelConfig

# Verification tolerances: max |logit difference| / std(reference logits) for unquantized files.
# F16 rounding measures 0.005-0.03 on the test models (Gemma 2's logit softcap compresses the
# spread, so it sits at the top); conversion bugs (a missed rotary permutation, Gemma's norm
# offset) give 0.5 or more.  float32 graphs differ from torch only in summation order: 1e-5.
F16_TOLERANCE = 0.05
FP32_TOLERANCE = 1e-3


class BuildFormat:
    key: ClassVar[str]                   # the registry's key; what a model family's ``supports`` names
    format: ClassVar[str]                # the manifest's and the CLI's name (several keys may share one)
    target: ClassVar[Target] = Target.CPU
    runtime: ClassVar[str]               # formats/runtimes.py name
    exporter: ClassVar[object]           # its Writer (exporters/stages.py): "module:Class", imported only when exporting
    backend: ClassVar[object]            # "module:class" of the runtime backend, or the class
    quant_enum: ClassVar[type]           # the format's weight types (a StrEnum)
    suffix: ClassVar[str | None] = None  # a bare file of this format (``eval FILE``): its suffix
    families: ClassVar[frozenset[str] | None] = None   # model types it builds; None: the families say
    splittable: ClassVar[bool] = False   # ``package --split`` can cut its artifact in parts
    runtime_model: ClassVar[object] = None   # a new runtime's rates (plan/runtimes.Runtime); None: a known one
    runtime_label: ClassVar[str | None] = None   # how reports name the runtime (None: ``runtime``)
    runtime_package: ClassVar[str | None] = None  # the Python package whose version reports record
    accelerator_only: ClassVar[bool] = False   # runs on an accelerator, never on the CPU
    windowed_cache: ClassVar[bool] = False     # the runtime keeps only a sliding window's tokens
    fixed_architectures: ClassVar[bool] = False   # the runtime has one graph per family (llama.cpp's archs)
    calibrates_experts: ClassVar[bool] = False    # --calibrate weights a mixture's experts (else: refused)
    rope_kinds: ClassVar[tuple] = (None, "default", "linear", "llama3")   # what a graph of our own computes
    partial_rotary: ClassVar[bool] = False     # rotary embeddings on part of each head
    scoring_rows: ClassVar[int | None] = None  # positions of logits its backend holds while scoring
                                               # (None: a whole window): verification's memory
    quants: ClassVar[tuple[str, ...]]
    float_quants: ClassVar[tuple[str, ...]]

    # -- choices ------------------------------------------------------------------------------
    def candidates(self, device) -> list[BuildChoice]:
        raise NotImplementedError

    def leanest(self, device) -> list[BuildChoice]:
        """The builds with the least memory (the advice's bisections ask only these)."""
        raise NotImplementedError

    def validate(self, c: BuildChoice) -> None:
        """Raise ValueError naming what is wrong with ``c`` for this format."""
        if c.block_size is not None:
            raise ValueError(f"{c.format} {c.quant} has no block size")
        if c.int8_levels is not None:
            raise ValueError("int8_levels is for ONNX int8 only")
        if c.calibrated and not self.calibratable(c.quant):
            raise ValueError(f"{c.format} {c.quant} has no calibrated form ({self.calibration_note})")

    calibration_note: ClassVar[str] = ""

    def calibratable(self, quant: str) -> bool:
        return False

    def takes_block(self, quant: str | None = None) -> bool:
        """Whether ``quant`` (any quant of the format, when None) has a block size to choose."""
        return False

    def kernel_family(self, quant: str) -> str:
        """Which of the runtime's kernel rates (runtimes.py) a build's weights run at."""
        return "float" if self.is_float(quant) else "quant"

    def is_float(self, quant: str) -> bool:
        return quant in self.float_quants

    def choice(self, quant: str, device=None, block_size: int | None = None,
               calibrated: bool = False) -> BuildChoice:
        """The build of ``quant`` this format makes for ``device`` (defaults filled in)."""
        raise NotImplementedError

    # -- sizes --------------------------------------------------------------------------------
    def weights(self, model: ModelConfig, c: BuildChoice) -> tuple[int, int, Counter]:
        """(resident weight bytes, bytes read per decoded token, tensor type histogram)."""
        raise NotImplementedError

    def typed_tensors(self, model: ModelConfig, c: BuildChoice):
        """(TensorSpec, kernel type) per tensor where the runtime's kernels are measured per type
        ([kernels] of a device profile, keyed "runtime:type"); None for formats without such rates."""
        return None

    def bytes_per_weight(self, kernel_type: str) -> float:
        """Bytes a kernel type reads per weight: a type without measured rates streams them at the
        device's bandwidth."""
        raise NotImplementedError

    def file_bytes(self, model: ModelConfig, c: BuildChoice) -> int:
        raise NotImplementedError

    def kv_element_bytes(self, c: BuildChoice) -> float:
        return 4.0

    def exact_cache(self, c: BuildChoice) -> bool:
        """Whether build ``c`` keeps its runtime's exact KV cache (not a quantized one)."""
        return True

    def backend_options(self, c: BuildChoice) -> dict:
        """What the runtime backend must be told to run build ``c`` as it was planned (keyword
        arguments of the backend's ``open``)."""
        return {}

    # -- quality and verification -------------------------------------------------------------
    def quality(self, model: ModelConfig, c: BuildChoice):
        """The expected quality of build ``c`` of ``model`` (formats/quality.py's model)."""
        raise NotImplementedError

    def tolerance(self, quant: str) -> float | None:
        """Logit tolerance for verification; None for lossy builds (then KLD is measured)."""
        return None

    def model_problem(self, model: ModelConfig) -> str | None:
        """Why this format cannot build ``model``; None when it can.  A built-in format asks the
        model's family (its ``supports``); a format that lists its ``families`` answers itself."""
        if self.families is None:
            from edgellm.models.families import family_of
            return family_of(model).build_problem(self.key)
        if model.model_type not in self.families:
            return (f"{model.name}: {self.key} does not support '{model.model_type}' yet; "
                    f"supported: {', '.join(sorted(self.families))}")
        return None

    def choice_problem(self, model: ModelConfig, c: BuildChoice) -> str | None:
        """Why this format cannot make build ``c`` of ``model`` although it takes the model
        (a quantization it does not write for it); None when it can.  The planner never offers
        such a build and the exporter refuses it before any work."""
        return None

    def family_problem(self, family, noun: str) -> str | None:
        """Why this format cannot express ``family``'s model (a family the format supports asks,
        ``models/families/shape.py``); None when it can.  A format of fixed per-family graphs
        takes the rope scalings the family's graph has; one that builds its own, its own."""
        from edgellm.models.families.rope import rope_kind

        kind = rope_kind(family.cfg)
        verb = "written" if self.fixed_architectures else "supported"
        if kind not in (family.gguf_rope_kinds if self.fixed_architectures else self.rope_kinds):
            if self.fixed_architectures:
                return (f"{family.name}: rope scaling {kind!r} is not written by {noun} for "
                        f"{family.cfg.get('model_type')} yet; the file would run without it (a different model)")
            return f"{family.name}: rope scaling {kind!r} is not supported by {noun} yet"
        partial = family.gguf_partial_rotary if self.fixed_architectures else self.partial_rotary
        if family.cfg.get("partial_rotary_factor", 1.0) != 1.0 and not partial:
            return f"{family.name}: partial rotary embeddings are not {verb} by {noun} yet"
        return family.format_problem(self)

    # -- apps ---------------------------------------------------------------------------------
    def app_runtime_lines(self, folder: str, first: str, lang: str) -> list[str]:
        """INTEGRATION.md's lines on loading the package in an app (``lang``: kotlin or swift);
        ``first``: the artifact's first file.  Names are safe for code (packaging checks them)."""
        return [f"Runtime: {self.runtime}. Load `{folder}/{first}` with it."]
