"""Tokenizers and chat templates, the same for every backend and for export verification.

Security boundary: a chat template comes from a model folder or a bundle someone downloaded, so it
is untrusted code in Jinja's language.  It is rendered only here, in Jinja's immutable sandboxed
environment (as transformers renders it), with a bounded template size, output length and render
time.  A template that reaches for Python internals, or runs too long, fails with one line.
Reading a tokenizer file is bounded the same way (``read_small_text``).
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path
from typing import Iterator

from edgellm.core.files import read_json_object, read_small_text
from edgellm.errors import BadInput, EdgeLLMError

TEMPLATE_FILE = "chat_template.jinja"          # where transformers 5 saves the template
MAX_TEMPLATE_CHARS = 1 << 20                   # real templates are a few KB
MAX_PROMPT_CHARS = 4 << 20                     # the rendered prompt
MAX_RENDER_SECONDS = 5.0
MAX_RENDER_BYTES = 256 << 20                  # memory a render may add to the process it runs in


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
        self.deadline = time.monotonic() + MAX_RENDER_SECONDS - 0.3    # inside the child's kill deadline

    def tick(self) -> None:
        if time.monotonic() > self.deadline:
            raise _Overrun(f"ran longer than {MAX_RENDER_SECONDS:g} s")


class _Overrun(Exception):
    pass


LAST_RENDER: dict = {}                          # the last child's wall time and peak RSS (benchmarks)
MAX_INT_BITS = 1 << 16                          # a number of about 20,000 digits
_WIDE_FORMAT = re.compile(r"%[-+ #0]*\*|%[-+ #0]*\d{7,}|%[-+ #0]*\d*\.\d{7,}|\{[^{}]*(?:\d{7,}|\{)")


def _big(value) -> str | None:
    """Why ``value`` is too big to keep, or None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int) and value.bit_length() > MAX_INT_BITS:
        return f"built a number of more than {MAX_INT_BITS:,} bits"
    if isinstance(value, (str, bytes, list, tuple, dict, set, frozenset)) and len(value) > MAX_PROMPT_CHARS:
        return f"built a value of more than {MAX_PROMPT_CHARS:,} items"
    return None


def _check(value):
    if (why := _big(value)) is not None:
        raise _Overrun(why)
    return value


def _check_sizes(args, kwargs) -> None:
    """Arguments that ask for a huge width or count (``center(10**9)``, ``ljust``, ``zfill``,
    ``indent``, ``wordwrap``, ``batch``...) are refused before the operation allocates."""
    for a in (*args, *kwargs.values()):
        if isinstance(a, int) and not isinstance(a, bool) and abs(a) > MAX_PROMPT_CHARS:
            raise _Overrun(f"asked for a size of {a:,}")
        if isinstance(a, float) and abs(a) > MAX_PROMPT_CHARS and a == a:
            raise _Overrun(f"asked for a size of {a:g}")
        _check(a)


def _check_format(text) -> None:
    """A format string whose width or precision alone builds a huge value (``%999999999d``,
    ``{:>999999999}``, a ``*`` or nested ``{}`` width) is refused before it is applied."""
    if isinstance(text, str) and _WIDE_FORMAT.search(text):
        raise _Overrun("asked for a huge format width")


def _environment(budget: _Budget):
    """Jinja's immutable sandbox with every operation that can build a value bounded: calls,
    filters, the arithmetic and concatenation operators, ``range``.  What these checks miss (an
    operation no one listed) is still stopped by the child process's memory and time limits."""
    import functools

    from jinja2 import ext
    from jinja2.compiler import CodeGenerator
    from jinja2.exceptions import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise TemplateError(message)

    def tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                          sort_keys=sort_keys)

    def strftime_now(fmt):
        _check_format(fmt)
        return time.strftime(str(fmt)[:256])

    def bounded_range(*args):
        r = range(*args)
        if len(r) > 100_000:                     # jinja's own sandbox limit
            raise _Overrun(f"asked for a range of {len(r):,} items")
        for i in r:
            budget.tick()
            yield i

    class Generator(CodeGenerator):
        def visit_Concat(self, node, frame):    # `a ~ b`: through the environment, to be bounded
            self.write("environment.concat((")
            for arg in node.nodes:
                self.visit(arg, frame)
                self.write(", ")
            self.write("))")

    class Env(ImmutableSandboxedEnvironment):
        intercepted_binops = frozenset(["*", "**", "+", "%"])
        code_generator_class = Generator

        def concat(self, parts):
            budget.tick()
            if sum(len(p) if isinstance(p, str) else 64 for p in parts) > MAX_PROMPT_CHARS:
                raise _Overrun(f"built a value of more than {MAX_PROMPT_CHARS:,} items")
            return _check("".join(str(p) for p in parts))

        def call_binop(self, context, operator, left, right):
            budget.tick()
            ints = all(isinstance(v, int) for v in (left, right))
            if operator == "**":
                if ints and right > 0 and left not in (0, 1, -1) and left.bit_length() * right > MAX_INT_BITS:
                    raise _Overrun("raised a number to a huge power")
                if isinstance(right, (int, float)) and abs(right) > 1000 and not ints:
                    raise _Overrun("raised a number to a huge power")
            if operator == "*":
                if ints and left.bit_length() + right.bit_length() > MAX_INT_BITS:
                    raise _Overrun(f"built a number of more than {MAX_INT_BITS:,} bits")
                for seq, n in ((left, right), (right, left)):
                    if isinstance(seq, (str, list, tuple)) and isinstance(n, int) and len(seq) * n > MAX_PROMPT_CHARS:
                        raise _Overrun(f"built a value of more than {MAX_PROMPT_CHARS:,} items")
            if operator == "+" and all(isinstance(v, (str, list, tuple)) for v in (left, right)) \
                    and len(left) + len(right) > MAX_PROMPT_CHARS:
                raise _Overrun(f"built a value of more than {MAX_PROMPT_CHARS:,} items")
            if operator == "%":
                _check_format(left)
                _check_sizes(right if isinstance(right, tuple) else (right,), {})
            return _check(super().call_binop(context, operator, left, right))

        def call(__self, __context, __obj, *args, **kwargs):     # noqa: N805 - jinja's signature
            budget.tick()
            _check_sizes(args, kwargs)
            return _check(super().call(__context, __obj, *args, **kwargs))

        def wrap_str_format(self, value):     # `'...'.format` is looked up: its widths checked then
            if getattr(value, "__name__", "") in ("format", "format_map"):
                _check_format(getattr(value, "__self__", None))
            return super().wrap_str_format(value)

    def bounded(name, f):
        @functools.wraps(f)                     # keeps jinja's pass_context/pass_environment marks
        def filt(*args, **kwargs):
            budget.tick()
            _check_sizes([a for a in args if not hasattr(a, "environment") and not hasattr(a, "autoescape")],
                         kwargs)
            if name == "format" and args:
                _check_format(next((a for a in args if isinstance(a, str)), None))
            return _check(f(*args, **kwargs))
        return filt

    # the options transformers' apply_chat_template uses, so prompts match the original's
    env = Env(trim_blocks=True, lstrip_blocks=True, extensions=[ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.filters = {name: bounded(name, f) for name, f in env.filters.items()}
    env.tests = {name: bounded(name, f) for name, f in env.tests.items()}
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    env.globals["range"] = bounded_range
    return env


def _render_here(template: str, messages: list[dict], add_generation_prompt: bool, where: str,
                 variables: dict) -> str:
    """The render itself, in this process (the child ``render_chat`` starts)."""
    from jinja2.exceptions import SecurityError, TemplateError

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
        raise BadInput(f"{where}: chat template failed: {str(e)[:300]}") from None
    except RecursionError:
        raise BadInput(f"{where}: chat template recursed too deeply; refused") from None
    except MemoryError:
        raise BadInput(f"{where}: chat template needed more than {MAX_RENDER_BYTES >> 20} MiB; refused") from None
    except BadInput:
        raise
    except Exception as e:  # noqa: BLE001 - any error a stranger's template provokes is one line
        raise BadInput(f"{where}: chat template failed ({type(e).__name__}: {str(e)[:160]})") from None
    return "".join(out)


def _limit_this_process() -> None:
    """Memory and CPU limits for the render's child: its address space may grow by
    ``MAX_RENDER_BYTES`` past what it inherited, its CPU time is bounded too."""
    import resource

    def lower(which, soft):
        cur_soft, hard = resource.getrlimit(which)
        if hard != resource.RLIM_INFINITY:
            soft = min(soft, hard)
        if cur_soft == resource.RLIM_INFINITY or soft < cur_soft:
            resource.setrlimit(which, (soft, hard))

    try:
        with open("/proc/self/statm") as f:
            size = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
        lower(resource.RLIMIT_AS, size + MAX_RENDER_BYTES)
    except (OSError, ValueError):
        pass                                    # no /proc (macOS): the time limit still holds
    try:
        lower(resource.RLIMIT_CPU, int(MAX_RENDER_SECONDS) + 2)
    except (OSError, ValueError):
        pass


def _in_child(template: str, messages: list[dict], add_generation_prompt: bool, where: str,
              variables: dict) -> str:
    """``_render_here`` in a forked child under memory and CPU limits, killed at the deadline: a
    single operation no check foresaw (one huge allocation, a slow builtin) cannot hang or exhaust
    this process.  The answer comes back through a pipe, bounded."""
    import select
    import signal

    r, w = os.pipe()
    started = time.monotonic()
    pid = os.fork()
    if pid == 0:                                # the child: render, answer, exit without cleanup
        code = 0
        try:
            os.close(r)
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                signal.signal(sig, signal.SIG_DFL)   # the parent's handlers clean up the parent's files
            _limit_this_process()
            try:
                answer = {"ok": _render_here(template, messages, add_generation_prompt, where, variables)}
            except BadInput as e:
                answer = {"error": str(e)}
            except BaseException as e:  # noqa: BLE001 - reported by the parent as one line
                answer = {"error": f"{where}: chat template failed ({type(e).__name__}); refused"}
            data = json.dumps(answer).encode()
            view = memoryview(data)
            while view:
                view = view[os.write(w, view):]
        except BaseException:  # noqa: BLE001 - nothing may escape the child
            code = 1
        finally:
            os._exit(code)
    os.close(w)
    limit = MAX_PROMPT_CHARS * 6 + 4096         # JSON of the largest prompt allowed
    chunks, got, why = [], 0, None
    deadline = started + MAX_RENDER_SECONDS
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                why = f"ran longer than {MAX_RENDER_SECONDS:g} s"
                break
            ready, _, _ = select.select([r], [], [], left)
            if not ready:
                continue
            block = os.read(r, 1 << 20)
            if not block:
                break
            chunks.append(block)
            got += len(block)
            if got > limit:
                why = f"output passed {MAX_PROMPT_CHARS:,} characters"
                break
    finally:
        os.close(r)
        if why is not None:
            os.kill(pid, signal.SIGKILL)
        _, status, usage = os.wait4(pid, 0)
        LAST_RENDER.update(seconds=time.monotonic() - started, peak_rss_bytes=usage.ru_maxrss * 1024)
    if why is not None:
        raise BadInput(f"{where}: chat template {why}; refused")
    try:
        answer = json.loads(b"".join(chunks))
    except ValueError:
        killed = os.WIFSIGNALED(status) and os.WTERMSIG(status)
        raise BadInput(f"{where}: chat template exhausted the render's memory or time limits"
                       + (f" (signal {killed})" if killed else "") + "; refused") from None
    if "error" in answer:
        raise BadInput(str(answer["error"]))
    return answer["ok"]


def render_chat(template: str, messages: list[dict], add_generation_prompt: bool = True,
                where: str = "the model", **variables) -> str:
    """``template`` applied to ``messages`` in the sandbox, in a child process bounded in memory
    (``MAX_RENDER_BYTES`` beyond this process) and time (``MAX_RENDER_SECONDS``).  ``variables``
    are the special tokens (bos_token, eos_token, ...), as transformers passes them."""
    if not isinstance(template, str):
        raise BadInput(f"{where}: the chat template is not text")
    if len(template) > MAX_TEMPLATE_CHARS:
        raise BadInput(f"{where}: chat template of {len(template):,} characters is too long")
    import jinja2.sandbox  # noqa: F401 - imported here, not in the child
    import jinja2.compiler  # noqa: F401

    if not hasattr(os, "fork"):                 # Windows: the in-process checks alone
        return _render_here(template, messages, add_generation_prompt, where, variables)
    return _in_child(template, messages, add_generation_prompt, where, variables)


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
