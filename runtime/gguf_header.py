"""What a GGUF header holds once read: the types the checker (``gguf_check``) fills and the
metadata rules (``gguf_meta``) and the runtime read.  Imports nothing of edgellm's."""

from __future__ import annotations

from dataclasses import dataclass, field


class Skipped(int):
    """A long numeric array, read past: its value is the element count."""

    def __repr__(self) -> str:
        return f"<{int(self)} values>"


@dataclass(frozen=True)
class TensorRecord:
    name: str
    shape: tuple[int, ...]       # ne0 first
    type_name: str
    offset: int
    nbytes: int


@dataclass
class GgufHeader:
    version: int
    metadata: dict = field(default_factory=dict)
    tensors: list[TensorRecord] = field(default_factory=list)
    data_start: int = 0
    file_size: int = 0
