"""One build of a model: the choice the planner makes, the manifest records, the exporters obey and
the runtime reads back to pick its backend.

A frozen, versioned value of enums.  What is valid depends on the format, and each format says so
itself (``edgellm.formats``): this module only coerces the fields and asks it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from enum import StrEnum

from edgellm.formats.registry import entry

VERSION = 2


class Format(StrEnum):
    """The built-in formats' names; a registered format may bring another (formats/)."""
    GGUF = "gguf"
    ONNX = "onnx"


class Target(StrEnum):
    """What the build is laid out for.  CPU: the runtime's ordinary graph (llama.cpp may still
    offload it to a GPU).  NPU_STATIC: a fixed-shape static QDQ graph for a QNN NPU."""
    CPU = "cpu"
    NPU_STATIC = "npu-static"


class KVCache(StrEnum):
    F16 = "f16"
    Q8_0 = "q8_0"
    F32 = "f32"


class GgufQuant(StrEnum):
    F16 = "F16"
    Q8_0 = "Q8_0"
    Q6_K = "Q6_K"
    Q5_K_M = "Q5_K_M"
    Q4_K_M = "Q4_K_M"
    Q4_0 = "Q4_0"
    IQ4_XS = "IQ4_XS"
    Q3_K_M = "Q3_K_M"
    Q2_K = "Q2_K"


class OnnxQuant(StrEnum):
    FP32 = "fp32"
    FP16 = "fp16"
    INT8 = "int8"
    INT4 = "int4"




@dataclass(frozen=True)
class BuildChoice:
    """``quant`` a GGUF file type or an ONNX weight type; ``kv_cache`` the cache element type;
    ``block_size`` weights per block for ONNX int4; ``int8_levels`` the int8 weight range of ONNX
    int8 (127, or 63 for x86 CPUs without VNNI: see exporters/onnx/weights.py)."""

    format: str                  # a registered format's name (Format: the built-in ones)
    quant: str                   # one of that format's weight types (its ``quant_enum``)
    kv_cache: KVCache
    block_size: int | None = None
    calibrated: bool = False     # data-aware quantization: see exporters/calibrate.py
    target: Target = Target.CPU
    int8_levels: int | None = None
    version: int = VERSION

    def __post_init__(self) -> None:
        try:
            if not isinstance(self.format, str):
                raise ValueError(f"{self.format!r} is not a format name")
            object.__setattr__(self, "target", Target(self.target))
            fmt = entry(self.format, self.target)
            object.__setattr__(self, "format", Format(self.format) if self.format in Format.__members__.values()
                               else str(self.format))
            object.__setattr__(self, "quant", fmt.quant_enum(self.quant))
            object.__setattr__(self, "kv_cache", KVCache(self.kv_cache))
        except ValueError as e:
            raise ValueError(f"invalid build: {e}") from None
        if self.version != VERSION:
            raise ValueError(f"build choice version {self.version} is not {VERSION}")
        fmt.validate(self)

    @property
    def key(self) -> tuple:
        """What makes two builds the same file (the KV cache type is chosen at load)."""
        return (self.format, self.quant, self.block_size, self.calibrated, self.target, self.int8_levels)

    @property
    def label(self) -> str:
        """Short name for tables: 'gguf Q4_K_M', 'onnx int4/32', 'onnx int8 npu'."""
        q = f"{self.quant}/{self.block_size}" if self.block_size else str(self.quant)
        npu = " npu" if self.target is Target.NPU_STATIC else ""
        return f"{self.format} {q}{'+cal' if self.calibrated else ''}{npu}"

    @property
    def slug(self) -> str:
        """The label as a file-name part: 'gguf-Q4_K_M', 'onnx-int4-b32-cal'."""
        q = f"{self.quant}-b{self.block_size}" if self.block_size else str(self.quant)
        return (f"{self.format}-{q}{'-cal' if self.calibrated else ''}"
                f"{'-npu' if self.target is Target.NPU_STATIC else ''}")

    def to_dict(self) -> dict:
        return {k: (str(v) if isinstance(v, StrEnum) else v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict) -> "BuildChoice":
        """A recorded choice; version 1 records (bundles of edgellm 0.1) are read too."""
        if not isinstance(data, dict):
            raise ValueError("a build choice is a JSON object")
        allowed = {"format", "quant", "kv_cache", "block_size", "calibrated", "target", "int8_levels", "version"}
        unknown = set(data) - allowed
        if unknown:
            raise ValueError(f"unknown BuildChoice fields: {sorted(unknown)}")
        data = dict(data)
        if data.get("version") == 1:          # 0.1 gave int8 a meaningless block size
            data["version"] = VERSION
            if data.get("quant") == "int8":
                data["block_size"] = None
        return cls(**data)
