"""One build of a model: the choice the planner makes, the manifest records and exporters obey."""

from __future__ import annotations

from dataclasses import asdict, dataclass

VERSION = 1


def calibratable(fmt: str, quant: str) -> bool:
    return (fmt == "gguf" and quant not in ("F16", "F32")) or (fmt == "onnx" and quant == "int4")


@dataclass(frozen=True)
class BuildChoice:
    """``format`` "gguf" or "onnx"; ``quant`` a GGUF file type (Q4_K_M ...) or an ONNX weight type
    (fp32, fp16, int8, int4); ``kv_cache`` the cache element type; ``block_size`` for ONNX int4/int8."""

    format: str
    quant: str
    kv_cache: str
    block_size: int | None = None
    calibrated: bool = False     # data-aware quantization (GGUF below F16, ONNX int4): see calibrate.py
    version: int = VERSION

    def __post_init__(self) -> None:
        if self.format not in ("gguf", "onnx"):
            raise ValueError(f"format must be gguf or onnx, not {self.format!r}")
        if (self.block_size is not None) != (self.format == "onnx" and self.quant in ("int4", "int8")):
            raise ValueError("block_size is given exactly for ONNX int4 and int8")
        if self.calibrated and not calibratable(self.format, self.quant):
            raise ValueError(f"{self.format} {self.quant} has no calibrated form "
                             "(GGUF types below F16 and ONNX int4 have)")

    @property
    def label(self) -> str:
        """Short name for tables: 'gguf Q4_K_M', 'onnx int4/32'."""
        q = f"{self.quant}/{self.block_size}" if self.block_size else self.quant
        return f"{self.format} {q}{'+cal' if self.calibrated else ''}"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "BuildChoice":
        allowed = {"format", "quant", "kv_cache", "block_size", "calibrated", "version"}
        unknown = set(data) - allowed
        if unknown:
            raise ValueError(f"unknown BuildChoice fields: {sorted(unknown)}")
        return cls(**data)
