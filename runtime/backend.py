"""One interface for every runtime backend, and ``open_backend``: the bundle's recorded build
choice picks the backend (edgellm.formats names it), never a guess from file names.

A backend offers: ``tokenize(text, add_bos)``, ``prompt_ids(prompt, chat)``, ``logits(ids)`` for
every position, ``stream(prompt, max_tokens, temperature, chat, seed)``, ``profile(prompt_tokens,
gen_tokens, repeats)``, ``has_chat_template``, ``n_ctx``, ``n_vocab``, ``load_s`` and ``threads``.
The tokenizer and chat-template code they share is runtime/tokenizer.py.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Iterator, Protocol

import numpy as np

from edgellm.errors import BadInput, EdgeLLMError
from edgellm.runtime.bundle import Bundle, open_bundle
from edgellm.runtime.profiling import Profile


class Backend(Protocol):
    n_ctx: int
    load_s: float
    threads: int

    @property
    def has_chat_template(self) -> bool: ...

    def tokenize(self, text: str, add_bos: bool = True) -> list[int]: ...

    def prompt_ids(self, prompt: str, chat: bool) -> list[int]: ...

    def logits(self, tokens: list[int]) -> np.ndarray: ...

    def stream(self, prompt: str, max_tokens: int, temperature: float, chat: bool,
               seed: int = 0) -> Iterator[str]: ...

    def profile(self, prompt_tokens: int, gen_tokens: int, repeats: int, depth: int = 0) -> Profile: ...


def choose(row: np.ndarray, temperature: float, rng: np.random.Generator) -> int:
    """Greedy at temperature 0, else a sample from softmax(row / temperature)."""
    if temperature <= 0:
        return int(row.argmax())
    p = np.exp((row - row.max()) / temperature)
    return int(rng.choice(len(p), p=p / p.sum()))


class TokenizedBackend:
    """What the ONNX backends share: the bundle's tokenizer.json (``self.tokenizer``, a
    runtime.tokenizer.Tokenizer) and a ``generate(ids, max_tokens, temperature, seed)`` of their own."""

    tokenizer = None

    @classmethod
    def open(cls, path: Path, n_ctx: int = 2048, threads: int | None = None, scoring: bool = False):
        return cls(path, threads=threads)

    @property
    def has_chat_template(self) -> bool:
        return self.tokenizer is not None and self.tokenizer.chat_template is not None

    def tokenize(self, text: str, add_bos: bool = True) -> list[int]:
        return self.tokenizer.encode(text, add_bos)

    def prompt_ids(self, prompt: str, chat: bool) -> list[int]:
        return self.tokenizer.prompt_ids(prompt, chat)

    def stream(self, prompt: str, max_tokens: int, temperature: float, chat: bool, seed: int = 0) -> Iterator[str]:
        from edgellm.runtime.tokenizer import text_pieces

        ids = self.prompt_ids(prompt, chat)
        return text_pieces(self.tokenizer.decode, self.generate(ids, max_tokens, temperature, seed))


def load_backend(spec, path: Path, n_ctx: int, threads: int | None, scoring: bool, **options) -> Backend:
    """The backend class ``spec`` names ("module:class", imported now, or the class) opened on ``path``;
    ``options``: what the build asks of its runtime (formats' ``backend_options``, e.g. the KV cache's type)."""
    if isinstance(spec, str):
        module, name = spec.split(":")
        spec = getattr(importlib.import_module(module), name)
    return spec.open(path, n_ctx=n_ctx, threads=threads, scoring=scoring, **options)


def recorded_choice(bundle: Bundle):
    """The build choice a bundle's manifest records (edgellm 0.1's version-1 records too, whose
    NPU builds were marked by an "npu" section instead of a target)."""
    from edgellm.formats.choice import BuildChoice

    data = bundle.manifest.get("choice")
    if isinstance(data, dict) and data.get("version") == 1 and "npu" in bundle.manifest:
        data = {**data, "block_size": None, "target": "npu-static"}
    try:
        return BuildChoice.from_dict(data)
    except (TypeError, ValueError, KeyError, AttributeError) as e:
        raise BadInput(f"{bundle.folder}: the manifest's build choice is not one this runtime knows "
                       f"({str(e)[:200]})") from None


def logit_slices(backend, ids: list[int]):
    """(first position, logits) over ``ids`` a batch of positions at a time where the backend
    offers it (llama.cpp's ``logit_slices``); else the window whole, from its own buffer."""
    if hasattr(backend, "logit_slices"):
        return backend.logit_slices(ids)
    return iter([(0, backend.logits(ids))])


def open_backend(folder: str | Path, n_ctx: int = 2048, threads: int | None = None,
                 scoring: bool = False) -> tuple[Bundle, Backend]:
    """Check a bundle (every file's sha256) and load it with the backend its build choice names.
    ``scoring``: keep logits for every position (``logits()``), as eval and verification need."""
    from edgellm.formats import format_for

    bundle = open_bundle(Path(folder))
    try:
        choice = recorded_choice(bundle)
        fmt = format_for(choice)
        return bundle, load_backend(fmt.backend, bundle.artifact, n_ctx, threads, scoring, **fmt.backend_options(choice))
    except EdgeLLMError as e:
        bundle.close()
        e.message = bundle.shown(e.message)
        e.args = (e.message,)
        raise
    except BaseException:
        bundle.close()
        raise


def open_file(path: str | Path, n_ctx: int = 2048, threads: int | None = None, scoring: bool = False) -> Backend:
    """A bare .gguf or .onnx file (no bundle, no checksums): for eval of files made elsewhere."""
    from edgellm.formats import FORMATS, by_suffix

    p = Path(path)
    fmt = by_suffix(p.suffix)
    if fmt is None or not p.is_file():
        known = sorted({f.suffix for f in FORMATS.values() if f.suffix})
        raise BadInput(f"{path}: not a {' or '.join(known)} file")
    return load_backend(fmt.backend, p, n_ctx, threads, scoring)
