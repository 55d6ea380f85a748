"""Calibration a decoder layer at a time: the statistics of ``whole.collect``, in memory
that does not grow with the model.

Forward (layer by layer, every window): the first layer's inputs come from the model's own
embedding; each layer is read from the checkpoint, run over all windows with the importance and
XᵀX hooks on its linear layers, and dropped; its outputs (the next layer's inputs) are kept in a
temporary file, one block per layer boundary.  Backward (for the Fisher diagonal, layer by layer
in reverse): the head's loss on tokens sampled from the model's own predictions gives the
gradient at the last layer's output; each layer is read again, re-run from its stored inputs and
back-propagated, and the gradient at its input handed down; the Fisher is summed per token from
the linear layers' inputs and output gradients (``fisher.TokenFisher``; or, with
``fisher_per="window"``, each window's squared weight gradient: the whole-model ``collect``'s,
up to float rounding).  One layer's weights, gradients and Fisher are in memory at a time.

Differences: with tied embeddings the head's and the embedding lookup's gradients are squared
apart (``collect`` squares their per-window sum); the cross term is dropped.  The Fisher is
estimated on ``fisher_windows`` of the windows and XᵀX on ``hessian_windows`` (each spread over
the text; see ``FISHER_WINDOWS``, ``HESSIAN_WINDOWS``); the importance always uses every window.
Only those windows' hidden states are kept at every layer boundary; the others' are kept for the
layer being run (its input and output).

Where the time goes is recorded per phase in ``Calibration.phases`` (forward, head, backward,
cost table, XᵀX; the GGUF writer adds GPTQ and ggml's quantizers).
"""

from __future__ import annotations

import functools
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from edgellm.exporters.calibrate.common import (LOGITS_BYTES, Calibration, calibration_windows, expert_hooks,
                                                gram_done, input_hooks, linear_inputs, spread)
# the defaults' home is common (memory predicts with them too); named here as before
from edgellm.exporters.calibrate.common import FISHER_PER, FISHER_WINDOWS, HESSIAN_WINDOWS  # noqa: F401
from edgellm.exporters import host_memory
from edgellm.exporters.calibrate.fisher import (HeadRows, Keep, TokenFisher, rows_array, rows_tensor,
                                                sample_tokens, sparse_embeddings, square_into, token_modules)
from edgellm.exporters.calibrate.memory import DISK_SPARE, preflight_layers, states_blocks, xtx_disk
from edgellm.exporters.compute import gpu_memory_guard, resolve


class LayerHessians(Mapping):
    """XᵀX / n per linear input, under checkpoint names, a decoder layer at a time when first asked
    for, and kept for that layer only: a writer asking layer by layer holds one layer's matrices,
    not the model's.  A layer's come from the temporary file the forward pass wrote them to
    (``grams``: no second pass), or, where that file has not got them (no disk for it), from the
    layer re-run over its stored inputs.  The head's input is small and kept (``eager``)."""

    def __init__(self, stream, states, calls, names: list[list[str]], eager: dict[str, np.ndarray],
                 windows: list[int], phases, grams: "_Grams | None" = None):
        self.stream, self.states, self.calls, self.eager = stream, states, calls, eager
        self.windows, self.phases, self.grams = windows, phases, grams
        self.layer_of = {n: i for i, layer in enumerate(names) for n in layer}
        self._layer, self._cache = None, {}

    def __getitem__(self, name: str) -> np.ndarray:
        if name in self.eager:
            return self.eager[name]
        i = self.layer_of[name]
        if self._layer != i:
            self._cache, self._layer = {}, None
            self._cache, self._layer = self._compute(i), i
        return self._cache[name]

    def group(self, name: str):
        """The decoder layer whose re-run yields ``name``'s XᵀX (None: kept from the start)."""
        return self.layer_of.get(name)

    def __iter__(self):
        return iter([*self.eager, *self.layer_of])

    def __len__(self) -> int:
        return len(self.eager) + len(self.layer_of)

    def _compute(self, i: int) -> dict[str, np.ndarray]:
        with self.phases("XᵀX"):
            if self.grams is not None and i in self.grams:
                return self.grams.get(i)
            with gpu_memory_guard(self.stream.device, "computing a layer's XᵀX", " (--calib-device cpu)"):
                return self._layer_grams(i)

    def _layer_grams(self, i: int) -> dict[str, np.ndarray]:
        import torch

        sums, counts, grams, shared = {}, {}, {}, {}
        layer = self.stream.load_layer(i, then=i + 1)
        handles = input_hooks(layer, self.stream.prefixes[i], sums, counts, grams, shared, True)[0]
        try:
            with torch.no_grad():
                for w in self.windows:
                    self.stream.run(layer, self.states.get(i, w, self.stream.device), self.calls[w][i])
        finally:
            for h in handles:
                h.remove()
            self.stream.drop_layer(i)
            host_memory.release()
        out = {n: gram_done(g).div_(counts[n]).cpu().numpy() for n, g in grams.items()}
        out.update({n: out[first] for n, first in shared.items()})
        return out


class _Grams:
    """Each decoder layer's XᵀX / n, written by the forward pass to a temporary file (unlinked at
    once: nothing is left behind) and read back a layer at a time by the writer.  A layer is
    written by a thread of its own while the next layer runs (the page cache takes it at the
    disk's pace: 8.5 s of a 0.5B shape's calibration when written in line, on a 2-core EPYC).  A
    layer the disk has no room for is not kept; the writer then re-runs that layer."""

    _pwrite = staticmethod(os.pwrite)

    def __init__(self, folder: Path):
        fd, path = tempfile.mkstemp(prefix=".edgellm-xtx-", dir=folder)
        os.unlink(path)
        self.fd, self.end, self.full = fd, 0, False
        self.where: dict[int, tuple[dict[str, tuple[int, int]], dict[str, str]]] = {}
        self._thread, self._error = None, None

    def put(self, i: int, grams: dict[str, np.ndarray], shared: dict[str, str]) -> None:
        """Layer ``i``'s matrices written in the background (``wait`` for them)."""
        import threading

        self.wait()
        if self.full or self.fd is None:
            return

        def write():
            try:
                self._write(i, grams, shared)
            except BaseException as e:      # noqa: BLE001 - raised in the caller's thread by ``wait``
                self._error = e
        self._thread = threading.Thread(target=write, name="edgellm-xtx", daemon=True)
        self._thread.start()

    def _write(self, i: int, grams: dict[str, np.ndarray], shared: dict[str, str]) -> None:
        at, start = {}, self.end
        try:
            for name, g in grams.items():
                data = np.ascontiguousarray(g, dtype=np.float32)
                self._pwrite(self.fd, data.tobytes(), self.end)
                at[name] = (self.end, data.shape[0])
                self.end += data.nbytes
        except OSError:                   # the disk filled up meanwhile: this layer and the later are re-run
            self.full, self.end = True, start
            os.ftruncate(self.fd, start)
            return
        self.where[i] = (at, dict(shared))

    def wait(self) -> None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def __contains__(self, i: int) -> bool:
        self.wait()
        return i in self.where

    def get(self, i: int) -> dict[str, np.ndarray]:
        self.wait()
        at, shared = self.where[i]
        out = {}
        for name, (offset, n) in at.items():
            raw = os.pread(self.fd, 4 * n * n, offset)
            out[name] = np.frombuffer(raw, np.float32).reshape(n, n).copy()
        out.update({n: out[first] for n, first in shared.items() if first in out})
        return out

    def close(self) -> None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    __del__ = close


class _States:
    """Hidden states per layer boundary and window, in a temporary file (read and written with
    pread/pwrite: they stay out of the process's memory): every boundary of the ``kept`` windows
    (the later passes re-run them), the current layer's input and output of the others."""

    def __init__(self, folder: Path, boundaries: int, windows: int, shape: tuple[int, int], kept=None):
        self.shape = shape
        self.fd = None
        self.block = int(np.prod(shape)) * 4
        kept = sorted(set(range(windows) if kept is None else kept))
        self.slot = {w: k for k, w in enumerate(kept)}
        self.others = {w: k for k, w in enumerate(w for w in range(windows) if w not in self.slot)}
        self.base = boundaries * len(kept)
        fd, path = tempfile.mkstemp(prefix=".edgellm-states-", dir=folder)
        os.unlink(path)                     # nothing left behind, whatever happens
        self.fd = fd
        os.ftruncate(fd, states_blocks(boundaries, windows, len(kept)) * self.block)

    def _at(self, b: int, w: int) -> int:
        if w in self.slot:
            return (b * len(self.slot) + self.slot[w]) * self.block
        return (self.base + 2 * self.others[w] + b % 2) * self.block

    def put(self, b: int, w: int, x) -> None:
        data = np.ascontiguousarray(x.detach().float().cpu().numpy()).tobytes()
        os.pwrite(self.fd, data, self._at(b, w))

    def get(self, b: int, w: int, device: str = "cpu"):
        import torch
        raw = os.pread(self.fd, self.block, self._at(b, w))
        return torch.from_numpy(np.frombuffer(raw, np.float32).copy().reshape(1, *self.shape)).to(device)

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    __del__ = close


def collect_layerwise(model_dir: Path, ckpt, text: str | None = None, context: int = 512, max_windows: int = 16,
                      hessian: bool = False, fisher: bool = False, trust_remote_code: bool = False,
                      threads: int | None = None, seed: int = 0, progress=lambda i, n: None,
                      work_dir: Path | None = None, fisher_sink=None, device: str = "cpu",
                      precision: str = "auto", fisher_windows: int | None = FISHER_WINDOWS,
                      fisher_per: str = FISHER_PER, hessian_windows: int | None = HESSIAN_WINDOWS,
                      parts=None) -> Calibration:
    """``fisher_sink(cal)``, called once the layers' importance is gathered (``cal.imatrix`` fills
    before any Fisher comes), returns what takes each tensor's Fisher diagonal when it is done:
    ``add(checkpoint name, array, rows=None)``, and ``wanted_rows(name)``: the rows it needs of a
    tensor (None: all), so only those are computed (``gguf.mix.Costs``).  Without it the Fisher
    is kept whole in ``cal.fisher``.  ``parts``: the model family's ``checkpoint_parts`` (fused
    parameters such as a mixture's experts, built from the checkpoint's per-expert tensors; their
    importance is gathered per expert: ``common.ExpertStats``)."""
    import torch

    if fisher_per not in ("window", "token"):
        raise ValueError(f"fisher_per: 'window' or 'token', not {fisher_per!r}")
    dev = resolve(device, "--calib-device")
    host_memory.keep_big_blocks_apart()
    if threads:
        torch.set_num_threads(threads)
    preflight_layers(Path(model_dir), context, max_windows, hessian, fisher, keep_fisher=fisher_sink is None,
                      device=dev, work_dir=work_dir, fisher_windows=fisher_windows, hessian_windows=hessian_windows)
    with gpu_memory_guard(dev, "calibrating", " (--calib-device cpu)"):
        return _collect(model_dir, ckpt, text, context, max_windows, hessian, fisher, trust_remote_code, seed,
                        progress, work_dir, fisher_sink, dev, compute_dtype(precision, dev), fisher_windows,
                        fisher_per == "token", hessian_windows, parts)


def compute_dtype(precision: str, device: str) -> str:
    """The matrix products' type: ``auto`` is bfloat16 on a GPU that has it, and on a CPU where
    torch multiplies bfloat16 faster than float32, measured here (``bf16_is_faster``): no rule
    about instruction sets holds across CPUs.  On a Xeon with oneDNN held to AVX512-BF16 the
    statistics of a Qwen2.5-0.5B shape took 113 s in bfloat16 against 86 s in float32 (52 s in
    bfloat16 on its AMX tiles); on a 2-core AMD EPYC (Zen 4, AVX512-BF16, no AMX) bfloat16
    products run 2.5x faster than float32 (benchmarks/RESULTS.md).  The statistics are summed in
    float32 either way."""
    import torch

    if precision != "auto":
        return precision
    if device.startswith("cuda"):
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float32"
    return "bfloat16" if bf16_is_faster() else "float32"


BF16_GAIN = 1.25             # bfloat16 only where it is clearly faster: the statistics lose a little precision
BF16_HOPELESS = 4.0          # a slice of the product this much slower than float32's whole: no need to time more


@functools.lru_cache(maxsize=1)
def bf16_is_faster(shape: tuple[int, int, int] = (512, 1024, 2048), repeats: int = 5) -> bool:
    """Whether this CPU's torch multiplies a window-sized product ([512, 1024] x [1024, 2048], a
    2-gigaflop layer product) at least ``BF16_GAIN`` times faster in bfloat16 than in float32:
    best of ``repeats`` each, about 0.1 s in all where bfloat16 has a kernel."""
    import time

    import torch

    m, k, n = shape
    b = {dtype: torch.randn(k, n).to(dtype) for dtype in (torch.float32, torch.bfloat16)}

    def seconds(dtype, rows: int) -> float:
        a = torch.randn(rows, k).to(dtype)
        t = time.perf_counter()
        a @ b[dtype]
        return time.perf_counter() - t

    return bf16_wins(seconds, torch.float32, torch.bfloat16, m, repeats)


def bf16_wins(seconds, f32, bf16, rows: int, repeats: int) -> bool:
    """``bf16_is_faster``'s decision from ``seconds(dtype, rows)`` (one product, timed).  bfloat16
    is first timed on a 32nd of the rows: where torch has no bfloat16 kernel for this CPU (a
    2-core AMD EPYC with AVX2 only: 0.37 GFLOP/s, against 89 in float32) the whole probe took 34 s of
    every calibrated export, and the slice answers in a fraction of a second."""
    seconds(f32, rows)                                  # the first call sets up the kernel
    best32 = min(seconds(f32, rows) for _ in range(repeats))
    part = max(1, rows // 32)
    seconds(bf16, part)
    if seconds(bf16, part) * (rows / part) > BF16_HOPELESS * best32:
        return False
    seconds(bf16, rows)
    return best32 >= BF16_GAIN * min(seconds(bf16, rows) for _ in range(repeats))


def _collect(model_dir, ckpt, text, context, max_windows, hessian, fisher, trust_remote_code, seed, progress,
             work_dir, fisher_sink, dev, dtype, fisher_windows, per_token: bool, hessian_windows, parts) -> Calibration:
    import torch
    from transformers import AutoTokenizer

    from edgellm.exporters.calibrate.common import default_text
    from edgellm.exporters.calibrate.stream import LayerStream

    tok = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=trust_remote_code)
    stream = LayerStream(Path(model_dir), ckpt, trust_remote_code, dev, dtype, parts)
    cfg = stream.config.get_text_config()
    context = min(context, int(getattr(cfg, "max_position_embeddings", context) or context))
    wins = calibration_windows(tok, default_text() if text is None else text, context, max_windows)
    cal = Calibration(tokens=sum(map(len, wins)), windows=len(wins), context=context, device=dev, precision=dtype)
    ids = [torch.tensor([w], device=dev) for w in wins]
    n, W = stream.n_layers, len(wins)
    fw = spread(W, fisher_windows) if fisher else []     # the Fisher's windows, spread out
    hw = spread(W, hessian_windows) if hessian else []   # XᵀX's
    cal.fisher_tokens = sum(len(wins[w]) for w in fw)
    cal.hessian_tokens = sum(len(wins[w]) for w in hw)
    ph = cal.phases
    cal.fisher_per = "token" if per_token else "window"
    steps, done = n * (2 if fisher else 1) + 1, 0
    sums, counts, grams, shared, experts = {}, {}, {}, {}, {}
    folder = Path(work_dir or tempfile.gettempdir())
    states = _States(folder, n + 1, W, (context, cfg.hidden_size), {*fw, *hw})
    # XᵀX gathered in the forward pass, on its windows, and kept on disk for the writer: no second
    # pass over the layers.  Where it would take more than half the free disk (xtx_disk: 2.5 GB for
    # a 0.5B shape, 33 GB for an 8B), the writer re-runs each layer over its stored inputs instead
    xtx = _Grams(folder) if hessian and shutil.disk_usage(folder).free > 2 * xtx_disk(model_dir) + DISK_SPARE \
        else None
    in_hw, hw_set, layer_grams, gram_rows = [False], set(hw), {}, {}
    try:
        calls = []
        with ph("forward (importance)"):
            for w in range(W):
                h0, c = stream.capture(ids[w])
                states.put(0, w, h0)
                calls.append(c)
            stream.hold(table=False, head=False)                # the layer passes need neither
        names: list[list[str]] = []
        for i in range(n):                                  # forward, a layer at a time
            with ph("forward (importance)"):
                layer = stream.load_layer(i, then=i + 1)
                names.append([stream.prefixes[i] + name for name, _, _ in linear_inputs(layer)])
                layer_shared = {}
                handles = input_hooks(layer, stream.prefixes[i], sums, counts, layer_grams, layer_shared,
                                      (lambda: in_hw[0]) if xtx else False, gram_rows)[0]
                handles += expert_hooks(layer, stream.prefixes[i], parts, experts)
                with torch.no_grad():
                    for w in range(W):
                        in_hw[0] = w in hw_set
                        states.put(i + 1, w, stream.run(layer, states.get(i, w, dev), calls[w][i]))
                for h in handles:
                    h.remove()
                shared.update(layer_shared)
                stream.drop_layer(i)
                if xtx:
                    with ph("XᵀX"):
                        xtx.put(i, {m: gram_done(g).div_(gram_rows[m]).cpu().numpy() for m, g in layer_grams.items()},
                                layer_shared)
                    layer_grams.clear()
                    gram_rows.clear()
                host_memory.release()
            done += 1
            progress(done, steps)
        if xtx is not None:
            with ph("XᵀX"):
                xtx.wait()                                  # the last layer's written
        with ph("head (importance, loss)"):
            stream.hold(table=False, head=True)
            head_handles = input_hooks(stream.model, "", sums, counts, grams, shared, hessian)[0]   # the head's input
            outer = stream.outer_matrices()
            sink = (fisher_sink(cal) if fisher_sink else Keep(cal.fisher)) if fisher else None
            rows = {name: rows_tensor(sink.wanted_rows(name), dev) for name, _ in outer} if fisher else {}
            fish: dict[str, torch.Tensor] = {}
            gen = torch.Generator(device=dev).manual_seed(seed)
            grads = {}
            head = HeadRows(stream.model, outer, rows) if fisher and not per_token else None
            tokens = (TokenFisher(token_modules(stream.model, outer), fish, rows, dtype)
                      if fisher and per_token else None)
            for p in stream.model.parameters():
                p.requires_grad_(fisher and not per_token and p.dim() == 2 and (head is None or p is not head.weight))
            step = max(1, LOGITS_BYTES // (4 * cfg.vocab_size))     # tokens whose logits are held at once
            for w in range(W):                                  # the head: its statistics, its loss
                if w not in fw:
                    stream.head_input(states.get(n, w, dev), ids[w])    # the head's input statistics only
                    continue
                h = states.get(n, w, dev).requires_grad_(True)
                for a in range(0, h.shape[1], step):            # the loss is a sum over tokens: exact in slices
                    part, part_ids = h[:, a:a + step], ids[w][:, a:a + step]
                    logits = stream.logits(part, part_ids).float()
                    with torch.no_grad():
                        sampled = sample_tokens(logits, gen)
                    torch.nn.functional.cross_entropy(logits, sampled, reduction="sum").backward()
                    del logits
                    if head is not None:
                        head.slice_done()
                grads[w] = h.grad.detach()                      # the window's gradient, squared once
                if head is not None:
                    head.window_done(fish)
                square_into(fish, outer, rows)
            for done_with in (head, tokens):
                if done_with is not None:
                    done_with.close()
            stream.hold(table=False, head=False)
            for hd in head_handles:
                hd.remove()
            host_memory.release()
        done += 1
        progress(done, steps)
        _finish_inputs(cal, sums, counts, grams, shared, hessian)
        for key, st in experts.items():                     # experts: importance only (no XᵀX, no Fisher)
            cal.imatrix.update(st.importance())
            cal.experts[key.rstrip(".")] = st.summary()
        experts.clear()
        if hessian:                                         # the layers' XᵀX: when asked for
            cal.hessian = LayerHessians(stream, states, calls, names, dict(cal.hessian), hw, ph, xtx)
        if fisher:
            with ph("backward (Fisher)"):
                for i in reversed(range(n)):                    # backward, a layer at a time
                    layer = stream.load_layer(i, then=i - 1)
                    params = [(stream.prefixes[i] + name, p) for name, p in layer.named_parameters() if p.dim() == 2]
                    mods = token_modules(layer, params) if per_token else {}
                    tokens = TokenFisher(mods, fish, dtype=dtype) if mods else None
                    squared = [(name, p) for name, p in params if name not in mods]   # any the hooks cannot take
                    # only those need their weight's gradient: the hooks' Fisher comes from each
                    # product's input and output gradient, so autograd skips the weight-gradient
                    # products (a third of a backward pass) and no float32 gradient of the layer
                    # (or of a mixture's experts) is made
                    for p in layer.parameters():
                        p.requires_grad_(False)
                    for _, p in squared:
                        p.requires_grad_(True)
                    for w in fw:
                        h = states.get(i, w, dev).requires_grad_(True)
                        stream.run(layer, h, calls[w][i]).backward(grads[w])
                        grads[w] = h.grad.detach()
                        square_into(fish, squared, {})
                    if tokens is not None:
                        tokens.close()
                    for name, _ in params:
                        f = fish.pop(name).div_(cal.fisher_tokens).cpu().numpy()
                        with ph("cost table"):
                            sink.add(name, f)
                    stream.drop_layer(i)
                    host_memory.release()
                    done += 1
                    progress(done, steps)
                stream.hold(table=True, head=False)
                for p in stream.model.parameters():
                    p.requires_grad_(p.dim() == 2)
                tokens = None
                if per_token:
                    tokens = TokenFisher(token_modules(stream.model, outer, lookups=True), fish, rows, dtype,
                                         {name: p.shape[0] for name, p in outer})
                with sparse_embeddings(stream.model):          # gradients of the rows looked up, not the table
                    for w in fw:                                # the embeddings (GPT-2's positions too)
                        stream.embed_backward(ids[w], grads[w])
                        if tokens is None:
                            square_into(fish, outer, rows)
                        else:
                            for _, p in outer:
                                p.grad = None
                if tokens is not None:
                    tokens.close()
                for name in list(fish):
                    f = fish.pop(name).div_(cal.fisher_tokens).cpu().numpy()
                    with ph("cost table"):
                        sink.add(name, f, rows=rows_array(rows.get(name)))
    except BaseException:
        stream.close()
        states.close()
        if xtx is not None:
            xtx.close()
        raise
    finally:
        for p in stream.model.parameters():
            p.requires_grad_(False)
        stream.release_outer()                              # the layers' re-runs need none of it
    if not hessian:
        states.close()                                      # else the lazy XᵀX reads it (closed with it)
    elif xtx is not None and len(xtx.where) == n:
        states.close()                                      # ... unless every layer's is on disk already
    return cal


def _finish_inputs(cal: Calibration, sums, counts, grams, shared, hessian: bool) -> None:
    """Importance vectors (and the XᵀX gathered so far: the head's) into ``cal``."""
    for name in list(sums):
        cal.imatrix[name] = (sums.pop(name) / counts[name]).cpu().numpy().astype(np.float32)
        if hessian and name in grams:
            cal.hessian[name] = grams.pop(name).div_(counts[name]).cpu().numpy()
    for name, first in shared.items():
        cal.imatrix[name] = cal.imatrix[first]
        if first in cal.hessian:
            cal.hessian[name] = cal.hessian[first]
