"""Text every machine with Python has: the Python standard library's own source.

Split once, here, so no two uses overlap: the *held-out* text (the last top-level modules in name
order) is what verification and ``eval`` score on by default; everything else is *training* text
(the reference and demo models learn from it; calibration reads from it).
"""

from __future__ import annotations

import sysconfig
from functools import lru_cache
from pathlib import Path

HELD_OUT_BYTES = 64 << 10


def stdlib_dir() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


@lru_cache(maxsize=4)
def held_out_files(limit_bytes: int = HELD_OUT_BYTES) -> tuple[Path, ...]:
    """Top-level standard-library modules, last in name order first, until ``limit_bytes``."""
    out, total = [], 0
    for p in sorted(stdlib_dir().glob("*.py"), reverse=True):
        out.append(p)
        total += len(p.read_text(encoding="utf-8", errors="replace"))
        if total >= limit_bytes:
            break
    return tuple(out)


def held_out_text(limit_bytes: int = HELD_OUT_BYTES) -> str:
    """Text none of edgellm's own models was trained on."""
    return "\n".join(p.read_text(encoding="utf-8", errors="replace")
                     for p in held_out_files(HELD_OUT_BYTES))[:limit_bytes]


def training_files(limit_bytes: int | None = None) -> list[Path]:
    """Every standard-library source file (sub-packages too, site-packages never) outside the
    held-out set, in a fixed order: top-level modules first, then the rest by path."""
    files, total = [], 0
    for p, size in _training_sources():
        if limit_bytes is not None and total + size > limit_bytes:
            break
        files.append(p)
        total += size
    if not files:
        raise RuntimeError(f"no Python sources under {stdlib_dir()} to learn from")
    return files


@lru_cache(maxsize=1)
def _training_sources() -> tuple[tuple[Path, int], ...]:
    root = stdlib_dir()
    held = set(held_out_files())
    top = sorted(root.glob("*.py"))
    # the stdlib's own site-packages (a system or pyenv Python's installed packages: torch and
    # the rest, 20,000+ files here) is never walked: listing it took a second of each calibration
    subdirs = [d for d in root.iterdir() if d.name != "site-packages" and d.is_dir()]
    rest = sorted(p for d in subdirs for p in d.rglob("*.py")
                  if "site-packages" not in p.relative_to(root).parts)
    return tuple((p, p.stat().st_size) for p in top + rest if p not in held)


def training_text(limit_bytes: int | None = None) -> str:
    return "\n".join(p.read_text(encoding="utf-8", errors="replace") for p in training_files(limit_bytes))


# A second text of another kind, for a second reference model: the Python documentation's prose
# (the language reference and library topics ``pydoc`` shows, shipped with CPython as
# ``pydoc_data.topics``), English with code samples where the above is code with comments.
DOCS_HELD_OUT_CHARS = 48 << 10


@lru_cache(maxsize=1)
def _docs_topics() -> tuple[tuple[str, str], ...]:
    try:
        from pydoc_data.topics import topics
    except ImportError as e:        # some distributions package the docs apart
        raise RuntimeError("this Python has no pydoc_data (the documentation's topics) to learn from") from e
    return tuple(sorted((str(k), str(v)) for k, v in topics.items()))


def docs_split() -> tuple[str, str]:
    """(training, held-out) documentation prose: the last topics in name order, until
    ``DOCS_HELD_OUT_CHARS``, are held out."""
    topics = _docs_topics()
    held, total = len(topics), 0
    while held > 1 and total < DOCS_HELD_OUT_CHARS:
        held -= 1
        total += len(topics[held][1])
    return "\n".join(v for _, v in topics[:held]), "\n".join(v for _, v in topics[held:])


def corpus_text(corpus: str, split: str, limit_bytes: int | None = None) -> str:
    """``corpus``: "source" (the standard library, above) or "docs"; ``split``: "training" or
    "held_out"."""
    if corpus == "source":
        return training_text(limit_bytes) if split == "training" else held_out_text(limit_bytes or HELD_OUT_BYTES)
    if corpus == "docs":
        text = docs_split()[0 if split == "training" else 1]
        return text if limit_bytes is None else text[:limit_bytes]
    raise ValueError(f"corpus: 'source' or 'docs', not {corpus!r}")


def text_ids(tok, text: str) -> list[int]:
    """``text``'s token ids by the transformers tokenizer ``tok``, no special tokens added.  The
    texts given here are long on purpose (calibration, held-out or training text, cut into windows
    afterwards): transformers' warning that they exceed the model's length is noise, not shown."""
    return tok.encode(text, add_special_tokens=False, verbose=False)
