"""A model folder's weights, whatever the layout: one safetensors file, a sharded set with its
index, or (only with ``allow_pickle``) PyTorch pickle files.

Security boundary: pickle files can run code when loaded.  They are refused unless the user
passes ``--allow-pickle``, and even then are loaded with ``torch.load(weights_only=True)``; a
file that needs more than that fails, it is never retried with ``weights_only=False``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from edgellm.errors import BadInput
from edgellm.core.model_files import inside, member, shown
from edgellm.exporters.io.safetensors_reader import SafetensorsFile

PICKLE_PATTERNS = ("pytorch_model*.bin", "*.pt", "*.pth", "*.ckpt")
MAX_INDEX = 64 << 20          # bytes of model.safetensors.index.json
MAX_TENSORS = 1 << 20         # tensor names in one checkpoint


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]


class Checkpoint:
    """Tensor names, shapes and lazy reads across all files of a checkpoint."""

    def __init__(self, folder: Path, where: dict[str, SafetensorsFile] | None = None,
                 arrays: dict[str, np.ndarray] | None = None):
        self.folder = folder
        self._where = where or {}
        self._arrays = arrays or {}

    def names(self) -> list[str]:
        return list(self._where) + list(self._arrays)

    def info(self, name: str) -> TensorInfo:
        if name in self._arrays:
            return TensorInfo(name, tuple(self._arrays[name].shape))
        return TensorInfo(name, self._where[name].tensors[name].shape)

    def read(self, name: str) -> np.ndarray:
        if name in self._arrays:
            return self._arrays[name]
        return self._where[name].read(name)

    def read_rows(self, name: str, rows_per_chunk: int, raw: bool = False) -> Iterator[np.ndarray]:
        """Row chunks as float32, or with ``raw`` as stored (see ``stored_dtype`` and ``widen``)."""
        if name in self._arrays:
            arr = self._arrays[name]
            for i in range(0, max(arr.shape[0], 1), rows_per_chunk):
                yield arr[i:i + rows_per_chunk]
            return
        yield from self._where[name].read_rows(name, rows_per_chunk, raw=raw)

    def read_picked_rows(self, name: str, rows: np.ndarray) -> np.ndarray:
        """Rows ``rows`` (sorted, distinct) of a matrix as float32, reading only those."""
        if name in self._arrays:
            return np.asarray(self._arrays[name][np.asarray(rows)], dtype=np.float32)
        return self._where[name].read_picked_rows(name, rows)

    def stored_dtype(self, name: str) -> str:
        """safetensors dtype name of a tensor ("F32" for tensors already in memory)."""
        return "F32" if name in self._arrays else self._where[name].dtype(name)


def _sharded(folder: Path, index_path: Path) -> Checkpoint:
    from edgellm.core.files import read_json_object

    index = read_json_object(inside(folder, index_path, "index"), MAX_INDEX)
    weight_map = index.get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise BadInput(f"{index_path}: not a valid safetensors index (needs a 'weight_map' object)")
    if len(weight_map) > MAX_TENSORS:
        raise BadInput(f"{index_path}: names {len(weight_map)} tensors; more than {MAX_TENSORS} is not a model")
    shards = sorted({s if isinstance(s, str) else repr(s) for s in weight_map.values()})
    paths = {s: member(folder, s, "shard", named_by=index_path) for s in shards}
    missing = [s for s, p in paths.items() if not p.is_file()]
    if missing:
        raise BadInput(f"{folder}: the index names {len(missing)} missing shard(s): "
                       f"{', '.join(shown(s) for s in missing[:5])}")
    files = {s: SafetensorsFile(p) for s, p in paths.items()}
    where = {}
    for name, shard in weight_map.items():
        if name not in files[shard].tensors:
            raise BadInput(f"{paths[shard]}: the index says it holds {shown(name)}, but it does not")
        where[name] = files[shard]
    return Checkpoint(folder, where=where)


def _pickled(folder: Path, files: list[Path]) -> Checkpoint:
    import torch  # host-only path: pickle checkpoints need torch to read

    arrays: dict[str, np.ndarray] = {}
    for f in files:
        try:
            state = torch.load(f, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - any failure is final: no weights_only=False retry
            raise BadInput(f"{f}: torch.load(weights_only=True) refused it ({type(e).__name__}); "
                           "edgellm never loads pickles unsafely. Convert it to safetensors.") from None
        if not isinstance(state, dict):
            raise BadInput(f"{f}: expected a state dict of tensors")
        for k, v in state.items():
            if hasattr(v, "float"):
                arrays[k] = v.float().numpy()
    return Checkpoint(folder, arrays=arrays)


PICKLE_CONSENT: set[Path] = set()      # folders --allow-pickle was given for, in this process


def transformers_weights(folder: Path) -> dict:
    """``from_pretrained`` options that keep transformers off pickle files it was not allowed:
    safetensors where the folder has them (transformers would otherwise read a ``.bin`` beside
    them); a pickle-only folder only after ``open_checkpoint`` accepted it with ``--allow-pickle``."""
    folder = Path(folder)
    if any(folder.glob("*.safetensors")):
        return {"use_safetensors": True}
    if folder.resolve() in PICKLE_CONSENT:
        return {"use_safetensors": False}            # transformers loads with weights_only=True
    raise BadInput(f"{folder}: only pickle weights (or none); pickle files can run code when loaded, so "
                   "edgellm refuses them here. Convert them to safetensors (export takes --allow-pickle)")


def open_checkpoint(folder: Path, allow_pickle: bool = False) -> Checkpoint:
    """Find and validate the weights in ``folder`` before anything is converted."""
    folder = Path(folder)
    if not folder.is_dir():
        raise BadInput(f"{folder}: not a folder; export needs a local model folder with weights")
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        return _sharded(folder, index)
    st = sorted(folder.glob("*.safetensors"))
    if st:
        where: dict[str, SafetensorsFile] = {}
        for path in st:
            f = SafetensorsFile(inside(folder, path, "weights file"))
            for name in f.tensors:
                if name in where:
                    raise BadInput(f"{folder}: tensor {name!r} appears in both {where[name].path.name} and {path.name}")
                where[name] = f
        return Checkpoint(folder, where=where)
    pickles = sorted({p for pat in PICKLE_PATTERNS for p in folder.glob(pat)})
    if pickles:
        if not allow_pickle:
            raise BadInput(f"{folder}: only pickle weights ({pickles[0].name}); pickle files can run code "
                           "when loaded, so edgellm refuses them. Pass --allow-pickle to load them with "
                           "torch.load(weights_only=True), or convert them to safetensors")
        PICKLE_CONSENT.add(folder.resolve())
        return _pickled(folder, [inside(folder, p, "weights file") for p in pickles])
    raise BadInput(f"{folder}: no weights found (expected model.safetensors or a sharded index)")
