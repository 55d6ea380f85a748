"""Runs edgellm's fixed-shape (NPU) ONNX models: every step feeds exactly ``seq`` tokens against a
cache of ``ctx - seq`` slots, as the QNN HTP requires.  Shorter steps are padded and the padding
masked out; the cache lives in numpy arrays the loop fills.  Uses the QNN execution provider when
``onnxruntime-qnn`` is installed (the HTP backend, or its simulator on x86), else the CPU provider.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Iterator

import numpy as np

from edgellm.errors import BadInput
from edgellm.runtime.backend import TokenizedBackend, choose
from edgellm.runtime.tokenizer import Tokenizer
from edgellm.runtime.quiet import captured_stderr
from edgellm.runtime.profiling import Profile, default_threads, profile_prompt, summarize

MASKED = -100.0


def _session(path: Path, threads: int, provider: str):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.log_severity_level = 3
    if provider == "qnn":
        import onnxruntime_qnn as q

        if q.get_ep_name() not in {d.ep_name for d in ort.get_ep_devices()}:
            ort.register_execution_provider_library(q.get_ep_name(), q.get_library_path())
        so.add_provider_for_devices([d for d in ort.get_ep_devices() if d.ep_name == q.get_ep_name()],
                                    {"backend_path": q.get_qnn_htp_path()})
        so.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
        with captured_stderr(fd=1):                # the QNN libraries print a start-up note to stdout
            return ort.InferenceSession(str(path), so)
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


class StaticOnnxModel(TokenizedBackend):
    def __init__(self, path: Path, threads: int | None = None, provider: str = "auto", tokenizer: bool = True):
        import importlib.util

        self.path = Path(path)
        self.threads = threads or default_threads()
        if provider == "auto":
            provider = "qnn" if importlib.util.find_spec("onnxruntime_qnn") else "cpu"
        self.provider = provider
        t0 = time.perf_counter()
        try:
            self.sess = _session(self.path, self.threads, provider)
        except Exception as e:                     # onnxruntime raises its own exception types
            raise BadInput(f"{self.path}: ONNX Runtime ({provider}) could not load it "
                           f"({str(e).splitlines()[0][:300]})") from None
        self.load_s = time.perf_counter() - t0
        ins = {i.name: i.shape for i in self.sess.get_inputs()}
        if "attention_bias" not in ins:
            raise BadInput(f"{self.path}: not an edgellm fixed-shape model")
        self.seq, self.n_ctx = int(ins["attention_bias"][2]), int(ins["attention_bias"][3])
        self.past_names = sorted((n for n in ins if n.startswith("past_key_values.")),
                                 key=lambda n: (int(n.split(".")[1]), n.endswith("value")))
        self.cache_shape = tuple(int(d) for d in ins[self.past_names[0]])
        self.tokenizer = Tokenizer(self.path.parent) if tokenizer else None

    def new_cache(self) -> dict:
        return {"arrays": [np.zeros(self.cache_shape, np.float32) for _ in self.past_names], "filled": 0}

    def feeds(self, tokens: list[int], cache: dict) -> dict:
        """The inputs of one step: ``tokens`` (up to ``seq``, padded) after the cache's filled slots."""
        n, seq, past, filled = len(tokens), self.seq, self.cache_shape[2], cache["filled"]
        if not 0 < n <= seq:
            raise ValueError(f"a step takes 1..{seq} tokens, not {n}")
        if filled + n > past:
            raise BadInput(f"{filled + n} tokens exceed this fixed-shape model's cache ({past} positions)")
        ids = np.zeros((1, seq), np.int32)
        ids[0, :n] = tokens
        pos = np.zeros((1, seq), np.int32)
        pos[0] = filled + np.minimum(np.arange(seq), n - 1)
        bias = np.full((1, 1, seq, past + seq), MASKED, np.float32)
        bias[..., :filled] = 0.0
        for r in range(seq):
            bias[0, 0, r, past:past + min(r, n - 1) + 1] = 0.0
        feeds = {"input_ids": ids, "position_ids": pos, "attention_bias": bias}
        feeds.update(zip(self.past_names, cache["arrays"]))
        return feeds

    def step(self, tokens: list[int], cache: dict) -> np.ndarray:
        """Logits [len(tokens), vocab] for up to ``seq`` tokens after the cache; the cache is updated."""
        n, filled = len(tokens), cache["filled"]
        outs = self.sess.run(None, self.feeds(tokens, cache))
        by_name = dict(zip((o.name for o in self.sess.get_outputs()), outs))
        for name, arr in zip(self.past_names, cache["arrays"]):
            new = by_name[name.replace("past_key_values.", "present.")]
            arr[:, :, filled:filled + n] = new[:, :, :n]
        cache["filled"] = filled + n
        return by_name["logits"][0, :n]

    def logits(self, tokens: list[int]) -> np.ndarray:
        cache = self.new_cache()
        return np.concatenate([self.step(tokens[i:i + self.seq], cache) for i in range(0, len(tokens), self.seq)])

    def _prefill(self, prompt: list[int], cache: dict) -> np.ndarray:
        last = None
        for i in range(0, len(prompt), self.seq):
            last = self.step(prompt[i:i + self.seq], cache)
        return last[-1]

    def generate(self, prompt: list[int], max_tokens: int, temperature: float = 0.0, seed: int = 0) -> Iterator[int]:
        rng = np.random.default_rng(seed)
        cache = self.new_cache()
        row = self._prefill(prompt, cache)
        for _ in range(max_tokens):
            tok = choose(row, temperature, rng)
            if tok in self.tokenizer.eos_ids or cache["filled"] + 1 > self.cache_shape[2]:
                return
            yield tok
            row = self.step([tok], cache)[-1]

    def profile(self, prompt_tokens: int, gen_tokens: int, repeats: int, depth: int = 0) -> Profile:
        if depth:
            raise BadInput("context depths need a growing cache; this fixed-shape NPU build profiles at depth 0")
        if prompt_tokens + gen_tokens > self.cache_shape[2]:
            raise BadInput(f"--prompt-tokens + --gen-tokens ({prompt_tokens + gen_tokens}) exceed this "
                           f"fixed-shape model's cache ({self.cache_shape[2]})")
        prompt = profile_prompt(self.tokenize, prompt_tokens)

        def once(p: list[int], n: int) -> tuple[float, float, float]:
            cache = self.new_cache()
            t0 = time.perf_counter()
            row = self._prefill(p, cache)
            t1 = time.perf_counter()
            tok = int(row.argmax())
            ttft = time.perf_counter() - t0
            for _ in range(n):
                tok = int(self.step([tok], cache)[-1].argmax())
            return t1 - t0, ttft, time.perf_counter() - t1

        once(prompt[:min(8, len(prompt))], 2)
        runs = [once(prompt, gen_tokens) for _ in range(repeats)]
        return summarize(runs, self.threads, prompt_tokens, gen_tokens, self.load_s)
