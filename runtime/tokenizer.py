"""Tokenizers and chat templates, the same for every backend and for export verification.

Security boundary: a chat template comes from a model folder or a bundle someone downloaded, so it
is untrusted code in Jinja's language.  It is rendered only here, in Jinja's immutable sandboxed
environment (as transformers renders it), with a bounded template size, output length and render
time.  A template that reaches for Python internals, or runs too long, fails with one line.
Reading a tokenizer file is bounded the same way (``read_small_text``).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Iterator

from edgellm.errors import BadInput, EdgeLLMError

TEMPLATE_FILE = "chat_template.jinja"          # where transformers 5 saves the template
MAX_TEMPLATE_CHARS = 1 << 20                   # real templates are a few KB
MAX_PROMPT_CHARS = 4 << 20                     # the rendered prompt
MAX_RENDER_SECONDS = 5.0
MAX_CONFIG_BYTES = 16 << 20                    # tokenizer_config.json / generation_config.json


def read_small_bytes(path: Path, limit: int = MAX_CONFIG_BYTES) -> bytes:
    """A regular file's bytes, refused before reading when it is larger than ``limit`` or not a
    plain file.  Opened without blocking and checked on the open file, so a FIFO, a device such
    as /dev/zero, or a file swapped in after a check can neither hang the read nor run it on."""
    from edgellm.fsutil import open_regular

    f, st = open_regular(path)
    with f:
        if st.st_size > limit:
            raise BadInput(f"{path}: {st.st_size:,} bytes is more than the {limit:,} a file of this kind may have")
        try:
            data = f.read(limit + 1)
        except OSError as e:
            raise BadInput(f"{path}: unreadable ({e.strerror})") from None
    if len(data) > limit:
        raise BadInput(f"{path}: grew past the {limit:,} bytes a file of this kind may have while being read")
    return data


def read_small_text(path: Path, limit: int = MAX_CONFIG_BYTES) -> str:
    """A small regular file's UTF-8 text (see ``read_small_bytes``)."""
    try:
        return read_small_bytes(path, limit).decode("utf-8")
    except UnicodeDecodeError as e:
        raise BadInput(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None


def read_json_object(path: Path, limit: int = MAX_CONFIG_BYTES) -> dict:
    """A small JSON object file, or {} when the file is absent."""
    if not path.exists() and not path.is_symlink():
        return {}
    try:
        value = json.loads(read_small_text(path, limit))
    except (ValueError, RecursionError) as e:
        raise BadInput(f"{path}: not valid JSON ({str(e)[:200]})") from None
    if not isinstance(value, dict):
        raise BadInput(f"{path}: expected a JSON object")
    return value


def template_from_config(config: dict) -> str | None:
    """The default chat template of a tokenizer_config.json (a string, or a list of named ones)."""
    t = config.get("chat_template")
    if isinstance(t, list):
        named = {e.get("name"): e.get("template") for e in t if isinstance(e, dict)}
        t = named.get("default")
    return t if isinstance(t, str) else None


def find_chat_template(folder: Path, config: dict | None = None) -> str | None:
    """The model's chat template: ``chat_template.jinja`` (transformers 5) or, for folders saved by
    transformers 4, ``tokenizer_config.json``'s ``chat_template``."""
    path = Path(folder) / TEMPLATE_FILE
    if path.is_file() or path.is_symlink():
        return read_small_text(path, MAX_TEMPLATE_CHARS)
    if config is None:
        config = read_json_object(Path(folder) / "tokenizer_config.json")
    return template_from_config(config)


class _Budget:
    """The render's time and size allowance, checked inside loops too: a template that loops
    without writing anything (nested ``range`` loops) still stops at the deadline."""

    def __init__(self):
        self.deadline = time.monotonic() + MAX_RENDER_SECONDS

    def tick(self) -> None:
        if time.monotonic() > self.deadline:
            raise _Overrun(f"ran longer than {MAX_RENDER_SECONDS:g} s")


class _Overrun(Exception):
    pass


def _environment(budget: _Budget):
    from jinja2 import ext
    from jinja2.exceptions import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise TemplateError(message)

    def tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                          sort_keys=sort_keys)

    def strftime_now(fmt):
        return time.strftime(fmt)

    def bounded_range(*args):
        r = range(*args)
        if len(r) > 100_000:                     # jinja's own sandbox limit
            raise _Overrun(f"asked for a range of {len(r):,} items")
        for i in r:
            budget.tick()
            yield i

    class Env(ImmutableSandboxedEnvironment):
        intercepted_binops = frozenset(["*", "**"])

        def call_binop(self, context, operator, left, right):
            budget.tick()
            if operator == "**" and isinstance(right, (int, float)) and abs(right) > 1000:
                raise _Overrun("raised a number to a huge power")
            if operator == "*":
                for seq, n in ((left, right), (right, left)):
                    if isinstance(seq, (str, list, tuple)) and isinstance(n, int) and len(seq) * n > MAX_PROMPT_CHARS:
                        raise _Overrun(f"built a value of more than {MAX_PROMPT_CHARS:,} items")
            return super().call_binop(context, operator, left, right)

        def call(__self, __context, __obj, *args, **kwargs):     # noqa: N805 - jinja's signature
            budget.tick()
            return super().call(__context, __obj, *args, **kwargs)

    # the options transformers' apply_chat_template uses, so prompts match the original's
    env = Env(trim_blocks=True, lstrip_blocks=True, extensions=[ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    env.globals["range"] = bounded_range
    return env


def render_chat(template: str, messages: list[dict], add_generation_prompt: bool = True,
                where: str = "the model", **variables) -> str:
    """``template`` applied to ``messages`` in the sandbox.  ``variables`` are the special tokens
    (bos_token, eos_token, ...), as transformers passes them."""
    from jinja2.exceptions import SecurityError, TemplateError

    if len(template) > MAX_TEMPLATE_CHARS:
        raise BadInput(f"{where}: chat template of {len(template):,} characters is too long")
    budget = _Budget()
    out: list[str] = []
    size = 0
    try:
        compiled = _environment(budget).from_string(template)
        for piece in compiled.generate(messages=messages, add_generation_prompt=add_generation_prompt,
                                       **variables):
            out.append(piece)
            size += len(piece)
            if size > MAX_PROMPT_CHARS:
                raise BadInput(f"{where}: chat template output passed {MAX_PROMPT_CHARS:,} characters; refused")
            budget.tick()
    except _Overrun as e:
        raise BadInput(f"{where}: chat template {e}; refused") from None
    except SecurityError as e:
        raise BadInput(f"{where}: chat template refused: it tried to reach outside the sandbox ({e})") from None
    except TemplateError as e:
        raise BadInput(f"{where}: chat template failed: {e}") from None
    except RecursionError:
        raise BadInput(f"{where}: chat template recursed too deeply; refused") from None
    except BadInput:
        raise
    except (ArithmeticError, LookupError, TypeError, ValueError, AttributeError, MemoryError) as e:
        raise BadInput(f"{where}: chat template failed ({type(e).__name__}: {str(e)[:160]})") from None
    return "".join(out)


def special_variables(config: dict) -> dict[str, str]:
    """bos_token, eos_token, ... of a tokenizer_config.json as the strings templates expect."""
    out = {}
    for k, v in config.items():
        if k.endswith("_token"):
            v = v.get("content") if isinstance(v, dict) else v
            if isinstance(v, str):
                out[k] = v
    return out


class Tokenizer:
    """A bundle's tokenizer.json through the ``tokenizers`` library (no transformers on the device),
    with its chat template and end-of-sequence ids."""

    def __init__(self, folder: Path):
        try:
            from tokenizers import Tokenizer as HFTokenizer
        except ImportError:
            raise EdgeLLMError("the ONNX backend needs the tokenizers package: pip install tokenizers") from None
        folder = Path(folder)
        path = folder / "tokenizer.json"
        if not path.is_file():
            raise BadInput(f"{folder}: no tokenizer.json in the bundle")
        try:
            self.tok = HFTokenizer.from_str(read_small_text(path, 256 << 20))
        except Exception as e:                     # tokenizers raises its own exception type
            raise BadInput(f"{path}: not a tokenizer the tokenizers library can read ({str(e)[:200]})") from None
        self.folder = folder
        self.config = read_json_object(folder / "tokenizer_config.json")
        self.chat_template = find_chat_template(folder, self.config)
        gen = read_json_object(folder / "generation_config.json")
        eos = gen.get("eos_token_id", self._special_id("eos_token"))
        ids = eos if isinstance(eos, list) else [eos] if eos is not None else []
        self.eos_ids = {i for i in ids if isinstance(i, int)}

    def _special_id(self, key: str) -> int | None:
        tok = special_variables(self.config).get(key)
        return self.tok.token_to_id(tok) if tok is not None else None

    def encode(self, text: str, add_bos: bool = True) -> list[int]:
        """As transformers encodes: tokenizer.json's own post-processor adds BOS where the model
        uses one."""
        return self.tok.encode(text, add_special_tokens=add_bos).ids

    def decode(self, ids: list[int]) -> str:
        return self.tok.decode(ids, skip_special_tokens=True)

    def chat_prompt(self, user: str) -> str | None:
        if self.chat_template is None:
            return None
        return render_chat(self.chat_template, [{"role": "user", "content": user}], True,
                           where=str(self.folder), **special_variables(self.config))

    def prompt_ids(self, prompt: str, chat: bool) -> list[int]:
        """The prompt's ids: wrapped in the chat template as a user message when ``chat`` and the
        model has one, else encoded as is (with BOS where the model uses one)."""
        text = self.chat_prompt(prompt) if chat else None
        return self.encode(text, add_bos=False) if text is not None else self.encode(prompt)


def text_pieces(decode, tokens: Iterator[int]) -> Iterator[str]:
    """Generated ids as text, piece by piece, holding back incomplete UTF-8 characters."""
    out: list[int] = []
    shown = ""
    for tok in tokens:
        out.append(tok)
        text = decode(out)
        if not text.endswith("\ufffd"):
            yield text[len(shown):]
            shown = text
