"""The llama.cpp backend: load a GGUF, score tokens, generate text, and time it.

Runs on the device with llama-cpp-python and numpy only.  Timing follows llama-bench's method:
the prompt is evaluated as one batch (prefill), then tokens are generated one at a time (decode),
each phase timed on its own; the figures are medians over repeats.
"""

from __future__ import annotations

import os
import threading
import time
import warnings
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from edgellm.core.ggml import kv_cache_block
from edgellm.core.names import KV_CACHE_TYPES
from edgellm.errors import BadInput, EdgeLLMError
from edgellm.runtime.membench import timed_steps
from edgellm.runtime.profiling import Profile, default_threads, depth_prefix, profile_prompt, summarize
from edgellm.runtime.quiet import captured_stderr
from edgellm.runtime.tokenizer import render_chat


class _SandboxedChatFormatter:
    """Stands in for llama-cpp-python's ``Jinja2ChatFormatter`` while a ``Llama`` is built.

    Security boundary: ``Llama()`` compiles every ``tokenizer.chat_template*`` of the GGUF's
    metadata with its own Jinja environment, and its ``create_chat_completion`` renders them there,
    unbounded (CVE-2024-34359 is this path).  With this class in its place nothing is compiled at
    load, and a chat completion an app asks of our ``Llama`` renders through ``render_chat``: the
    sandbox with its time and memory bounds, in a child process."""

    def __init__(self, template: str, eos_token: str, bos_token: str, add_generation_prompt: bool = True,
                 stop_token_ids=None, **_):
        self.template, self.eos_token, self.bos_token = template, eos_token, bos_token
        self.add_generation_prompt = add_generation_prompt

    def __call__(self, *, messages, functions=None, function_call=None, tools=None, tool_choice=None, **kwargs):
        from llama_cpp import llama_chat_format

        extra = {k: v for k, v in (("tools", tools), ("functions", functions)) if v is not None}
        prompt = render_chat(self.template, list(messages), self.add_generation_prompt,
                             where="the GGUF's chat template", eos_token=self.eos_token,
                             bos_token=self.bos_token, **extra)
        return llama_chat_format.ChatFormatterResponse(prompt=prompt, stop=[self.eos_token], added_special=True)

    def to_chat_handler(self):
        from llama_cpp import llama_chat_format

        return llama_chat_format.chat_formatter_to_chat_completion_handler(self)


@contextmanager
def _templates_sandboxed():
    """llama-cpp-python's template formatter swapped for ours while ``Llama()`` runs."""
    from llama_cpp import llama_chat_format

    theirs = llama_chat_format.Jinja2ChatFormatter
    llama_chat_format.Jinja2ChatFormatter = _SandboxedChatFormatter
    try:
        yield
    finally:
        llama_chat_format.Jinja2ChatFormatter = theirs


def _trained_context(path: Path) -> int | None:
    """The context the model was trained for (GGUF ``<arch>.context_length``), if readable."""
    from edgellm.runtime.gguf_check import read_header

    meta = read_header(path, check_meaning=False).metadata     # open() checked it in full
    value = meta.get(f"{meta.get('general.architecture')}.context_length")
    return value if isinstance(value, int) and value > 0 else None


def _cache_type(path: Path, kv_cache: str) -> str:
    """``kv_cache``, or f16 where llama.cpp cannot make it: a quantized cache's blocks must divide
    a head (bundles planned before edgellm checked that recorded q8_0 for narrower heads)."""
    from edgellm.runtime.gguf_check import read_header

    block = kv_cache_block(kv_cache)
    if block == 1:
        return kv_cache
    meta = read_header(path, check_meaning=False).metadata
    arch = meta.get("general.architecture")
    heads, width = meta.get(f"{arch}.attention.head_count"), meta.get(f"{arch}.embedding_length")
    head = meta.get(f"{arch}.attention.key_length") or (
        width // heads if isinstance(heads, int) and isinstance(width, int) and heads > 0 else None)
    value = meta.get(f"{arch}.attention.value_length")
    widths = [w for w in (head, value) if isinstance(w, int) and not isinstance(w, bool)]
    if any(w % block for w in widths):
        from edgellm.errors import EdgeLLMWarning

        warnings.warn(f"{path.name}: heads of {'/'.join(map(str, widths))} cannot hold llama.cpp's {kv_cache} "
                      f"cache (blocks of {block}); it runs with an f16 cache", EdgeLLMWarning, stacklevel=3)
        return "f16"
    return kv_cache


def _cpu_has_amx() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return False
    return " amx_int8" in flags or " amx_tile" in flags


_LOAD_LOCK = threading.Lock()


@contextmanager
def _without_extra_buffers():
    """Load with llama.cpp's extra weight buffers off (``use_extra_bufts``: AMX tiles and CPU
    repacking).  On CPUs with AMX, ggml's AMX matrix multiply crashes the process on K-quant
    weights (SIGSEGV in ggml_backend_amx_mul_mat, seen here on a Xeon with llama-cpp-python 0.3.36;
    llama.cpp issue 20824 is the same crash), so those machines run the plain CPU kernels.
    llama-cpp-python's constructor has no argument for it, so the defaults it starts from are
    adjusted for the duration of the load."""
    import llama_cpp.llama_cpp as C

    original = C.llama_model_default_params

    def defaults():
        params = original()
        params.use_extra_bufts = False
        return params

    with _LOAD_LOCK:
        C.llama_model_default_params = defaults
        try:
            yield
        finally:
            C.llama_model_default_params = original


SCORING_BATCH = 64          # positions per llama_decode when scoring: llama.cpp's output and compute
                            # buffers hold this many rows of logits, not the window's (a 262,144-token
                            # vocabulary's 512-position window is 512 MiB a copy)


class LlamaCppModel:
    def __init__(self, path: Path, n_ctx: int = 2048, threads: int | None = None, scoring: bool = False,
                 kv_cache: str = "f16"):
        try:
            from llama_cpp import Llama
        except ImportError:
            raise EdgeLLMError("the llama.cpp backend needs llama-cpp-python: pip install llama-cpp-python") from None
        if kv_cache not in KV_CACHE_TYPES:
            raise BadInput(f"{path}: a KV cache of {str(kv_cache)[:40]!r} is not one llama.cpp runs here "
                           f"({', '.join(KV_CACHE_TYPES)})")
        self.path = Path(path)
        self.kv_cache = kv_cache = _cache_type(self.path, kv_cache)
        self.threads = threads or default_threads()
        trained = _trained_context(self.path)
        if trained:
            n_ctx = min(n_ctx, trained)
        t0 = time.perf_counter()
        # under `run`/`profile`'s supervisor (edgellm/cli/supervise.py) llama.cpp's stderr goes to
        # the parent, which keeps it back unless the process dies: then its last words are the
        # error line.  Elsewhere its loader chatter is captured here and dropped.
        supervised = os.environ.get("EDGELLM_SUPERVISED") == "1"
        try:
            guard = _without_extra_buffers() if _cpu_has_amx() else nullcontext()
            with nullcontext() if supervised else captured_stderr(), guard, _templates_sandboxed():
                # flash attention on, as llama.cpp's own "auto" default picks on CPU
                # scoring reads every position's logits a batch at a time through the C API
                # (logit_slices): small batches, and no llama-cpp-python copy of them all
                self.llm = Llama(model_path=str(self.path), n_ctx=n_ctx,
                                 n_batch=min(n_ctx, SCORING_BATCH if scoring else 512),
                                 n_threads=self.threads, n_threads_batch=self.threads,
                                 logits_all=False, flash_attn=True, verbose=supervised,
                                 type_k=KV_CACHE_TYPES[kv_cache], type_v=KV_CACHE_TYPES[kv_cache])
        except (ValueError, RuntimeError) as e:
            raise BadInput(f"{self.path}: llama.cpp could not load it ({e})") from None
        self.load_s = time.perf_counter() - t0
        self.n_ctx = n_ctx

    @classmethod
    def open(cls, path: Path, n_ctx: int = 2048, threads: int | None = None, scoring: bool = False,
             kv_cache: str = "f16"):
        """Our bounds-checked GGUF reader passes the file before llama.cpp parses it.  ``kv_cache``:
        the cache's element type the build was planned with (its memory and speed assume it)."""
        from edgellm.runtime.gguf_check import read_header

        read_header(Path(path))
        return cls(path, n_ctx=n_ctx, threads=threads, scoring=scoring, kv_cache=kv_cache)

    @property
    def n_vocab(self) -> int:
        return self.llm.n_vocab()

    @property
    def chat_template(self) -> str | None:
        t = self.llm.metadata.get("tokenizer.chat_template")
        return t if isinstance(t, str) and t else None

    @property
    def has_chat_template(self) -> bool:
        return self.chat_template is not None

    def tokenize(self, text: str, add_bos: bool = True) -> list[int]:
        return self.llm.tokenize(text.encode("utf-8"), add_bos=add_bos, special=True)

    def logit_slices(self, tokens: list[int]):
        """(first position, logits [positions, vocab]) for every position of ``tokens``, one
        llama_decode batch at a time: memory holds a batch's logits, whatever the vocabulary."""
        import llama_cpp as C

        if len(tokens) > self.n_ctx:
            raise ValueError(f"{len(tokens)} tokens do not fit a context of {self.n_ctx}")
        ctx, n_vocab, step = self.llm.ctx, self.n_vocab, self.llm.n_batch
        C.llama_memory_clear(C.llama_get_memory(ctx), True)
        batch = C.llama_batch_init(step, 0, 1)
        try:
            for a in range(0, len(tokens), step):
                chunk = tokens[a:a + step]
                for i, t in enumerate(chunk):
                    batch.token[i], batch.pos[i], batch.n_seq_id[i] = t, a + i, 1
                    batch.seq_id[i][0], batch.logits[i] = 0, True
                batch.n_tokens = len(chunk)
                if C.llama_decode(ctx, batch) != 0:
                    raise EdgeLLMError("llama.cpp failed to evaluate a window")
                yield a, np.ctypeslib.as_array(C.llama_get_logits(ctx), shape=(len(chunk), n_vocab)).copy()
        finally:
            C.llama_batch_free(batch)
            C.llama_memory_clear(C.llama_get_memory(ctx), True)

    def _feed(self, tokens: list[int], what: str) -> None:
        """``tokens`` into the context, at most n_batch per llama_decode (the last one's logits kept)."""
        import llama_cpp as C

        step = self.llm.n_batch
        for a in range(0, len(tokens), step):
            chunk = (C.llama_token * len(tokens[a:a + step]))(*tokens[a:a + step])
            if C.llama_decode(self.llm.ctx, C.llama_batch_get_one(chunk, len(chunk))) != 0:
                raise EdgeLLMError(f"llama.cpp failed to evaluate {what}")

    def _last_choice(self) -> int:
        """The greedy choice after the last llama_decode, on a zero-copy view of its logits."""
        import llama_cpp as C

        return int(np.ctypeslib.as_array(C.llama_get_logits_ith(self.llm.ctx, -1), shape=(self.n_vocab,)).argmax())

    def greedy_ids(self, tokens: list[int], n: int) -> list[int]:
        """The ``n`` tokens greedy decoding takes after ``tokens``, end-of-generation tokens
        included (verification compares continuations of a fixed length)."""
        import llama_cpp as C

        if len(tokens) + n > self.n_ctx:
            raise ValueError(f"{len(tokens) + n} tokens do not fit a context of {self.n_ctx}")
        memory = C.llama_get_memory(self.llm.ctx)
        C.llama_memory_clear(memory, True)
        out: list[int] = []
        try:
            self._feed(list(tokens), "a prompt")
            out.append(self._last_choice())
            while len(out) < n:
                self._feed(out[-1:], "a token")
                out.append(self._last_choice())
        finally:
            C.llama_memory_clear(memory, True)
        return out

    def logits(self, tokens: list[int]) -> np.ndarray:
        """Logits for every position of ``tokens`` (open with ``scoring`` for small batches)."""
        return np.concatenate([part for _, part in self.logit_slices(tokens)]) if tokens else \
            np.zeros((0, self.n_vocab), np.float32)

    def _token_text(self, token: int) -> str:
        return self.llm._model.token_get_text(token) if token >= 0 else ""

    def prompt_ids(self, prompt: str, chat: bool) -> list[int]:
        """The prompt's ids: with ``chat`` the GGUF's chat template, rendered in edgellm's sandbox
        (runtime/tokenizer.py, never llama-cpp-python's renderer), wraps it as a user message and
        the text is tokenized as transformers' apply_chat_template does (no extra BOS)."""
        if not chat or self.chat_template is None:
            return self.tokenize(prompt)
        specials = {"bos_token": self._token_text(self.llm.token_bos()),
                    "eos_token": self._token_text(self.llm.token_eos())}
        text = render_chat(self.chat_template, [{"role": "user", "content": prompt}], True,
                           where=str(self.path), **specials)
        return self.tokenize(text, add_bos=False)

    def stream(self, prompt: str, max_tokens: int, temperature: float, chat: bool, seed: int = 0) -> Iterator[str]:
        """Generated text piece by piece; llama.cpp stops at the vocabulary's end-of-generation tokens."""
        ids = self.prompt_ids(prompt, chat)
        if len(ids) >= self.n_ctx:
            raise BadInput(f"the prompt is {len(ids)} tokens, more than fits the context of {self.n_ctx} "
                           "(give --context more, up to the model's trained context)")
        for c in self.llm.create_completion(ids, max_tokens=max_tokens, temperature=temperature,
                                            seed=seed, stream=True):
            yield c["choices"][0]["text"]

    def _timed_run(self, prompt: list[int], gen_tokens: int, prefix: list[int] = (),
                   evict: Callable[[], None] | None = None) -> tuple[float, float, float]:
        """(prefill s, time to first token s, decode s) through llama.cpp's C API directly: one
        llama_decode for the prompt, then one per token, the greedy choice taken on a zero-copy
        view of llama.cpp's logits (no per-token copy of the vocabulary, no candidate array).
        ``evict``: called before each decoded token, outside the timing (membench.CacheEvictor)."""
        import llama_cpp as C

        ctx = self.llm.ctx
        C.llama_memory_clear(C.llama_get_memory(ctx), True)
        step = self.llm.n_batch
        self._feed(list(prefix), "the context prefix")        # the context depth: filled, not timed
        greedy = self._last_choice

        chunks = [(C.llama_token * len(prompt[i:i + step]))(*prompt[i:i + step]) for i in range(0, len(prompt), step)]
        t0 = time.perf_counter()
        for arr in chunks:                  # at most n_batch tokens per llama_decode, as llama-bench does
            if C.llama_decode(ctx, C.llama_batch_get_one(arr, len(arr))) != 0:
                raise EdgeLLMError("llama.cpp failed to evaluate the prompt")
        t1 = time.perf_counter()
        tok = (C.llama_token * 1)(greedy())
        ttft = time.perf_counter() - t0
        def step() -> None:
            if C.llama_decode(ctx, C.llama_batch_get_one(tok, 1)) != 0:
                raise EdgeLLMError("llama.cpp failed to decode a token")
            tok[0] = greedy()

        spent = timed_steps(step, gen_tokens, evict)
        self.llm.reset()
        return t1 - t0, ttft, spent

    def profile(self, prompt_tokens: int, gen_tokens: int, repeats: int, depth: int = 0,
                evict: Callable[[], None] | None = None) -> Profile:
        """Time prefill of a ``prompt_tokens`` prompt and greedy decode of ``gen_tokens``, after
        ``depth`` tokens already in the cache (llama-bench's -d); ``evict`` runs before each
        decoded token, untimed."""
        if depth + prompt_tokens + gen_tokens > self.n_ctx:
            raise BadInput(f"depth + --prompt-tokens + --gen-tokens ({depth + prompt_tokens + gen_tokens}) exceed "
                           f"the context ({self.n_ctx})")
        prompt = profile_prompt(self.tokenize, prompt_tokens)
        prefix = depth_prefix(prompt or [0], depth)
        self._timed_run(prompt[:min(8, len(prompt))], 2)          # warm-up, as llama-bench does
        runs = [self._timed_run(prompt, gen_tokens, prefix, evict) for _ in range(repeats)]
        return summarize(runs, self.threads, prompt_tokens, gen_tokens, self.load_s, depth)
