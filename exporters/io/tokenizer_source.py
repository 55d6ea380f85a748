"""The tokenizer transformers actually runs, which is the one a bundle must ship.

transformers 5 rebuilds a tokenizer whose class has its own constructor from the file's vocabulary
and merges with the class's own pre-tokenizer and normalizer, whatever tokenizer.json says (a Qwen2
model gets Qwen2's split rules; SmolLM2's ``GPT2Tokenizer`` loses the file's digit splitting).  The
model was trained, and is verified, with what ``AutoTokenizer`` runs, so that is what the exporters
convert (GGUF's ``tokenizer.ggml.pre``) and ship (the bundle's tokenizer.json).

Asking ``AutoTokenizer`` imports transformers (and torch, unless blocked), which a plain GGUF export
otherwise never does: the question is asked in a child process (about 1.4 s), and the answer cached by
the tokenizer files' sha256 and the transformers version (``cache_root()/tokenizers/``), so a
model's first export pays it once.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path


FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
         "added_tokens.json", "config.json")
PIPELINE_KEYS = ("normalizer", "pre_tokenizer", "decoder")
PROBE_TIMEOUT_S = 300
MAX_ANSWER_BYTES = 256 << 20


@dataclass(frozen=True)
class Effective:
    """What transformers runs: its tokenizer.json (None for a tokenizer without a fast backend),
    and which parts of the pipeline differ from the folder's file."""
    json_text: str | None
    differs: tuple[str, ...]

    def pipeline(self) -> dict | None:
        return None if self.json_text is None else {k: json.loads(self.json_text).get(k) for k in PIPELINE_KEYS}

    def record(self) -> dict:
        return {"source": "the tokenizer transformers runs (AutoTokenizer)",
                "rebuilt_from_class": list(self.differs)}


def _oversized(folder: Path) -> bool:
    """Whether a tokenizer file is bigger than the bundle takes (``package.copy_tokenizer``'s
    bounds): it is then neither hashed for the cache key nor handed to transformers (a 10 GB sparse
    special_tokens_map.json was hashed for 40 s and more before the copy refused it)."""
    from edgellm.core.files import MAX_CONFIG_BYTES
    from edgellm.core.model_files import member

    for name in FILES:
        p = member(folder, name, "tokenizer file")
        limit = 256 << 20 if name in ("tokenizer.json", "tokenizer.model") else MAX_CONFIG_BYTES
        if p.is_file() and p.stat().st_size > limit:
            return True
    return False


def _key(folder: Path, trust_remote_code: bool) -> str:
    from importlib.metadata import version

    from edgellm.core.files import sha256_file
    from edgellm.core.model_files import member

    h = hashlib.sha256(f"transformers {version('transformers')} trust {trust_remote_code}\n".encode())
    for name in FILES:
        p = member(folder, name, "tokenizer file")
        h.update(f"{name} {sha256_file(p) if p.is_file() else '-'}\n".encode())
    return h.hexdigest()


def _differs(folder: Path, text: str | None) -> tuple[str, ...]:
    from edgellm.core.files import read_json_object
    from edgellm.core.model_files import member

    p = member(folder, "tokenizer.json", "tokenizer file")
    if text is None or not p.is_file():
        return ()
    mine, theirs = read_json_object(p, MAX_ANSWER_BYTES), json.loads(text)
    return tuple(k for k in PIPELINE_KEYS if mine.get(k) != theirs.get(k))


def effective_tokenizer(folder: Path, trust_remote_code: bool = False) -> Effective:
    """The tokenizer ``AutoTokenizer`` builds for ``folder`` (cached; asked in a child process)."""
    from edgellm.core.files import atomic_write, read_small_text
    from edgellm.exporters.reference_model import cache_root

    folder = Path(folder)
    if _oversized(folder):
        return Effective(None, ())              # the copy refuses it, with the file's name and bound
    cache = cache_root() / "tokenizers" / f"{_key(folder, trust_remote_code)}.json"
    if cache.is_file():
        text = read_small_text(cache, MAX_ANSWER_BYTES)
    else:
        cache.parent.mkdir(parents=True, exist_ok=True)
        out = cache.with_name(cache.name + ".answer")
        cmd = [sys.executable, "-m", "edgellm.exporters.io.tokenizer_source", str(folder), str(out)]
        if trust_remote_code:
            cmd.append("--trust-remote-code")
        try:
            run = subprocess.run(cmd, capture_output=True, text=True, timeout=PROBE_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            run = None
        if run is None or run.returncode != 0 or not out.is_file():
            # transformers cannot build it (no tokenizer files, a slow tokenizer it cannot convert,
            # code the folder would have to run): the format's own checks say what is missing, and
            # verification compares whatever ships with what transformers runs
            out.unlink(missing_ok=True)
            return Effective(None, ())
        text = read_small_text(out, MAX_ANSWER_BYTES)
        out.unlink(missing_ok=True)
        atomic_write(cache, text.encode())
    answer = json.loads(text)
    tj = answer.get("tokenizer_json")
    return Effective(tj, _differs(folder, tj))


def _probe(folder: str, out: str, trust_remote_code: bool) -> None:
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    # tokenizers need no torch: blocking it halves the child's time (1.4 s instead of 3.5 s); the
    # suite checks the answer against AutoTokenizer loaded with torch (tests/test_real_model.py)
    sys.modules["torch"] = None                              # type: ignore[assignment]
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder, trust_remote_code=trust_remote_code)
    backend = getattr(tok, "backend_tokenizer", None)
    Path(out).write_text(json.dumps({"class": type(tok).__name__,
                                     "tokenizer_json": backend.to_str() if backend is not None else None}))


if __name__ == "__main__":
    _probe(sys.argv[1], sys.argv[2], "--trust-remote-code" in sys.argv[3:])

