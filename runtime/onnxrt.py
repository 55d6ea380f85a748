"""The ONNX Runtime backend: load an edgellm ONNX decoder, score tokens, generate text, time it.

Runs on the device with onnxruntime, tokenizers and numpy only.  The KV cache never leaves ONNX
Runtime: each step's ``present`` outputs are bound, as OrtValues, as the next step's ``past``
inputs (IO binding), so no cache bytes are copied through numpy.  The head runs only on the
positions asked for (``logits_to_keep``): one during generation, all when scoring.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Iterator

import numpy as np

from edgellm.errors import BadInput, EdgeLLMError
from edgellm.runtime.backend import TokenizedBackend, choose
from edgellm.runtime.profiling import Profile, default_threads, depth_prefix, profile_prompt, summarize
from edgellm.runtime.tokenizer import Tokenizer


def ort_value(arr: np.ndarray):
    import onnxruntime as ort

    return ort.OrtValue.ortvalue_from_numpy(arr)


class OnnxModel(TokenizedBackend):
    def __init__(self, path: Path, threads: int | None = None):
        try:
            import onnxruntime as ort
        except ImportError:
            raise EdgeLLMError("the ONNX backend needs onnxruntime: pip install onnxruntime") from None
        self.path = Path(path)
        self.threads = threads or default_threads()
        so = ort.SessionOptions()
        so.intra_op_num_threads = self.threads
        so.inter_op_num_threads = 1
        so.log_severity_level = 3
        t0 = time.perf_counter()
        try:
            self.sess = ort.InferenceSession(str(self.path), so, providers=["CPUExecutionProvider"])
        except Exception as e:                     # onnxruntime raises its own exception types
            raise BadInput(f"{self.path}: ONNX Runtime could not load it ({str(e).splitlines()[0][:300]})") from None
        self.load_s = time.perf_counter() - t0
        self.past_names = [i.name for i in self.sess.get_inputs() if i.name.startswith("past_key_values.")]
        self.present_names = [o.name for o in self.sess.get_outputs() if o.name.startswith("present.")]
        first = next(i for i in self.sess.get_inputs() if i.name.startswith("past_key_values."))
        self.kv_heads, self.head_dim = int(first.shape[1]), int(first.shape[3])
        self.n_vocab = int(self.sess.get_outputs()[0].shape[-1])
        meta = self.sess.get_modelmeta().custom_metadata_map
        ctx = meta.get("max_context", "")
        self.n_ctx = int(ctx) if ctx.isdigit() and 0 < int(ctx) <= 1 << 27 else 1 << 27
        self.tokenizer = Tokenizer(self.path.parent)

    # --- one forward step ------------------------------------------------------------------
    def empty_cache(self) -> list:
        import onnxruntime as ort

        z = np.zeros((1, self.kv_heads, 0, self.head_dim), np.float32)
        return [ort.OrtValue.ortvalue_from_numpy(z) for _ in self.past_names]

    def step(self, tokens: list[int], cache: list, keep: int = 1) -> tuple[np.ndarray, list]:
        """Run ``tokens`` after ``cache``: (logits [keep, vocab], the new cache)."""
        past = cache[0].shape()[2] if cache else 0
        total = past + len(tokens)
        if total > self.n_ctx:
            raise BadInput(f"{total} tokens exceed the model's context ({self.n_ctx})")
        if len(cache) != len(self.past_names):
            raise BadInput(f"KV cache has {len(cache)} tensors; the model takes {len(self.past_names)}")
        for v in cache:
            shape = v.shape()
            if len(shape) != 4 or shape[1] != self.kv_heads or shape[3] != self.head_dim or shape[2] != past:
                raise BadInput(f"KV cache tensor of shape {shape} does not match the model "
                               f"(expected [1, {self.kv_heads}, {past}, {self.head_dim}])")
        b = self.sess.io_binding()
        b.bind_cpu_input("input_ids", np.asarray([tokens], dtype=np.int64))
        b.bind_cpu_input("attention_mask", np.ones((1, total), dtype=np.int64))
        # an overridable initializer in graphs that give it a default: bound as a value, not a CPU input
        b.bind_ortvalue_input("logits_to_keep", ort_value(np.array(keep, dtype=np.int64)))
        for name, v in zip(self.past_names, cache):
            b.bind_ortvalue_input(name, v)
        b.bind_output("logits")
        for name in self.present_names:
            b.bind_output(name)
        self.sess.run_with_iobinding(b)
        outs = b.get_outputs()
        return outs[0].numpy()[0], list(outs[1:])

    def logits(self, tokens: list[int]) -> np.ndarray:
        """Logits for every position of ``tokens``."""
        out, _ = self.step(tokens, self.empty_cache(), keep=len(tokens))
        return out

    def greedy_ids(self, tokens: list[int], n: int) -> list[int]:
        """The ``n`` tokens greedy decoding takes after ``tokens``, end-of-generation tokens
        included (verification compares continuations of a fixed length)."""
        logits, cache = self.step(list(tokens), self.empty_cache())
        out = [int(logits[-1].argmax())]
        while len(out) < n:
            logits, cache = self.step(out[-1:], cache)
            out.append(int(logits[-1].argmax()))
        return out

    # --- generation ------------------------------------------------------------------------
    def generate(self, prompt: list[int], max_tokens: int, temperature: float = 0.0, seed: int = 0) -> Iterator[int]:
        rng = np.random.default_rng(seed)
        logits, cache = self.step(prompt, self.empty_cache())
        for _ in range(max_tokens):
            tok = choose(logits[-1], temperature, rng)
            if tok in self.tokenizer.eos_ids:
                return
            yield tok
            if cache[0].shape()[2] + 1 > self.n_ctx:
                return
            logits, cache = self.step([tok], cache)

    # --- timing ----------------------------------------------------------------------------
    def _timed_run(self, prompt: list[int], gen_tokens: int, prefix: list[int] = ()) -> tuple[float, float, float]:
        cache = self.step(list(prefix), self.empty_cache())[1] if prefix else self.empty_cache()   # the depth, untimed
        t0 = time.perf_counter()
        logits, cache = self.step(prompt, cache)
        t1 = time.perf_counter()
        tok = int(logits[-1].argmax())
        ttft = time.perf_counter() - t0
        t2 = time.perf_counter()
        for _ in range(gen_tokens):
            logits, cache = self.step([tok], cache)
            tok = int(logits[-1].argmax())
        return t1 - t0, ttft, time.perf_counter() - t2

    def profile(self, prompt_tokens: int, gen_tokens: int, repeats: int, depth: int = 0) -> Profile:
        if depth + prompt_tokens + gen_tokens > self.n_ctx:
            raise BadInput(f"depth + --prompt-tokens + --gen-tokens ({depth + prompt_tokens + gen_tokens}) exceed "
                           f"the context ({self.n_ctx})")
        prompt = profile_prompt(self.tokenize, prompt_tokens)
        prefix = depth_prefix(prompt or [0], depth)
        self._timed_run(prompt[:min(8, len(prompt))], 2)          # warm-up
        runs = [self._timed_run(prompt, gen_tokens, prefix) for _ in range(repeats)]
        return summarize(runs, self.threads, prompt_tokens, gen_tokens, self.load_s, depth)
