"""Calibration a decoder layer at a time: the statistics of ``calibrate.collect``, in memory
that does not grow with the model.

Forward (layer by layer, every window): the first layer's inputs come from the model's own
embedding; each layer is read from the checkpoint, run over all windows with the importance and
XᵀX hooks on its linear layers, and dropped; its outputs (the next layer's inputs) are kept in a
temporary file, one block per layer boundary.  Backward (for the Fisher diagonal, layer by layer
in reverse): the head's loss on tokens sampled from the model's own predictions gives the
gradient at the last layer's output; each layer is read again, re-run from its stored inputs and
back-propagated, its weights' squared gradients summed per window (the same per-window Fisher as
``collect``), and the gradient at its input handed down.  So the statistics are the whole-model
ones, up to float rounding, with one layer's weights, gradients and Fisher in memory at a time.

One difference: with tied embeddings the head's and the embedding lookup's gradients are squared
apart (``collect`` squares their per-window sum); the cross term is dropped.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from edgellm.exporters.calibrate import (Calibration, _linear_inputs, _preflight_layers, calibration_windows,
                                         input_hooks)


LOGITS_BYTES = 64 << 20      # the head's logits are computed for this many bytes' worth of tokens at a time


class LayerHessians(Mapping):
    """XᵀX / n per linear input, under checkpoint names, computed a decoder layer at a time when
    first asked for (the layer re-run over its stored inputs) and kept for that layer only: a
    writer asking layer by layer holds one layer's matrices, not the model's.  The head's input
    is small and kept (``eager``)."""

    def __init__(self, stream, states, calls, names: list[list[str]], eager: dict[str, np.ndarray]):
        self.stream, self.states, self.calls, self.eager = stream, states, calls, eager
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

    def __iter__(self):
        return iter([*self.eager, *self.layer_of])

    def __len__(self) -> int:
        return len(self.eager) + len(self.layer_of)

    def _compute(self, i: int) -> dict[str, np.ndarray]:
        import torch

        sums, counts, grams, shared = {}, {}, {}, {}
        layer = self.stream.load_layer(i)
        handles = input_hooks(layer, self.stream.prefixes[i], sums, counts, grams, shared, True)[0]
        try:
            with torch.no_grad():
                for w, call in enumerate(self.calls):
                    self.stream.run(layer, self.states.get(i, w), call[i])
        finally:
            for h in handles:
                h.remove()
            self.stream.drop_layer(i)
        out = {n: (g / counts[n]).numpy() for n, g in grams.items()}
        out.update({n: out[first] for n, first in shared.items()})
        return out


class _States:
    """Hidden states per layer boundary and window, in a temporary file (read and written with
    pread/pwrite: they stay out of the process's memory)."""

    def __init__(self, folder: Path, boundaries: int, windows: int, shape: tuple[int, int]):
        self.shape, self.windows = shape, windows
        self.fd = None
        self.block = int(np.prod(shape)) * 4
        fd, path = tempfile.mkstemp(prefix=".edgellm-states-", dir=folder)
        os.unlink(path)                     # nothing left behind, whatever happens
        self.fd = fd
        os.ftruncate(fd, boundaries * windows * self.block)

    def put(self, b: int, w: int, x) -> None:
        data = np.ascontiguousarray(x.detach().numpy(), dtype=np.float32).tobytes()
        os.pwrite(self.fd, data, (b * self.windows + w) * self.block)

    def get(self, b: int, w: int):
        import torch
        raw = os.pread(self.fd, self.block, (b * self.windows + w) * self.block)
        return torch.from_numpy(np.frombuffer(raw, np.float32).copy().reshape(1, *self.shape))

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    __del__ = close


def collect_layerwise(model_dir: Path, ckpt, text: str | None = None, context: int = 512, max_windows: int = 16,
                      hessian: bool = False, fisher: bool = False, trust_remote_code: bool = False,
                      threads: int | None = None, seed: int = 0, progress=lambda i, n: None,
                      work_dir: Path | None = None, fisher_sink=None) -> Calibration:
    """``fisher_sink(cal)``, called once the importance and XᵀX are in ``cal``, returns a callable
    that takes each tensor's Fisher diagonal (checkpoint name, array) when it is done; without it
    the Fisher is kept in ``cal.fisher``."""
    import torch
    from transformers import AutoTokenizer

    from edgellm.exporters.calibrate import default_text
    from edgellm.exporters.layer_stream import LayerStream

    if threads:
        torch.set_num_threads(threads)
    _preflight_layers(Path(model_dir), context, max_windows, hessian, fisher, keep_fisher=fisher_sink is None)
    tok = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=trust_remote_code)
    stream = LayerStream(Path(model_dir), ckpt, trust_remote_code)
    cfg = stream.config.get_text_config()
    context = min(context, int(getattr(cfg, "max_position_embeddings", context) or context))
    wins = calibration_windows(tok, default_text() if text is None else text, context, max_windows)
    cal = Calibration(tokens=sum(map(len, wins)), windows=len(wins), context=context)
    ids = [torch.tensor([w]) for w in wins]
    n, W = stream.n_layers, len(wins)
    steps, done = n * (2 if fisher else 1) + 1, 0
    sums, counts, grams, shared = {}, {}, {}, {}
    states = _States(Path(work_dir or tempfile.gettempdir()), n + 1, W, (context, cfg.hidden_size))
    try:
        calls = []
        for w in range(W):
            h0, c = stream.capture(ids[w])
            states.put(0, w, h0)
            calls.append(c)
        names: list[list[str]] = []
        for i in range(n):                                  # forward, a layer at a time
            layer = stream.load_layer(i)
            names.append([stream.prefixes[i] + name for name, _, _ in _linear_inputs(layer)])
            handles = input_hooks(layer, stream.prefixes[i], sums, counts, grams, shared, False)[0]
            with torch.no_grad():
                for w in range(W):
                    states.put(i + 1, w, stream.run(layer, states.get(i, w), calls[w][i]))
            for h in handles:
                h.remove()
            stream.drop_layer(i)
            done += 1
            progress(done, steps)
        head_handles = input_hooks(stream.model, "", sums, counts, grams, shared, hessian)[0]   # the head's input
        outer = [(name, p) for name, p in stream.model.named_parameters() if p.dim() == 2]
        fish: dict[str, torch.Tensor] = {}
        gen = torch.Generator().manual_seed(seed)
        grads = []
        for p in stream.model.parameters():
            p.requires_grad_(fisher and p.dim() == 2)
        step = max(1, LOGITS_BYTES // (4 * cfg.vocab_size))     # tokens whose logits are held at once
        for w in range(W):                                  # the head: its statistics, its loss
            h = states.get(n, w).requires_grad_(fisher)
            for a in range(0, h.shape[1], step):            # the loss is a sum over tokens: exact in slices
                part, part_ids = h[:, a:a + step], ids[w][:, a:a + step]
                if fisher:
                    logits = stream.logits(part, part_ids).float()
                    with torch.no_grad():
                        sampled = torch.multinomial(torch.softmax(logits, -1), 1, generator=gen)[:, 0]
                    torch.nn.functional.cross_entropy(logits, sampled, reduction="sum").backward()
                    del logits
                else:
                    with torch.no_grad():
                        stream.logits(part, part_ids)
            if fisher:                                      # the window's gradient, squared once
                grads.append(h.grad.detach())
                _square_into(fish, outer)
        for hd in head_handles:
            hd.remove()
        done += 1
        progress(done, steps)
        _finish_inputs(cal, sums, counts, grams, shared, hessian)
        if hessian:                                         # the layers' XᵀX: when asked for
            cal.hessian = LayerHessians(stream, states, calls, names, dict(cal.hessian))
        add = fisher_sink(cal) if fisher_sink else cal.fisher.__setitem__
        if fisher:
            for i in reversed(range(n)):                    # backward, a layer at a time
                layer = stream.load_layer(i)
                params = [(stream.prefixes[i] + name, p) for name, p in layer.named_parameters() if p.dim() == 2]
                for _, p in params:
                    p.requires_grad_(True)
                for w in range(W):
                    h = states.get(i, w).requires_grad_(True)
                    stream.run(layer, h, calls[w][i]).backward(grads[w])
                    grads[w] = h.grad.detach()
                    _square_into(fish, params)
                for name, _ in params:
                    add(name, fish.pop(name).div_(cal.tokens).numpy())
                stream.drop_layer(i)
                done += 1
                progress(done, steps)
            for w in range(W):                              # the embeddings (GPT-2's positions too)
                stream.embed_backward(ids[w], grads[w])
                _square_into(fish, outer)
            for name in list(fish):
                add(name, fish.pop(name).div_(cal.tokens).numpy())
    except BaseException:
        states.close()
        raise
    finally:
        for p in stream.model.parameters():
            p.requires_grad_(False)
    if not hessian:
        states.close()                                      # else the lazy XᵀX reads it (closed with it)
    return cal


def _finish_inputs(cal: Calibration, sums, counts, grams, shared, hessian: bool) -> None:
    """Importance vectors (and the XᵀX gathered so far: the head's) into ``cal``."""
    for name in list(sums):
        cal.imatrix[name] = (sums.pop(name) / counts[name]).numpy().astype(np.float32)
        if hessian and name in grams:
            cal.hessian[name] = (grams.pop(name) / counts[name]).numpy()
    for name, first in shared.items():
        cal.imatrix[name] = cal.imatrix[first]
        if first in cal.hessian:
            cal.hessian[name] = cal.hessian[first]


def _square_into(fish: dict, params) -> None:
    """Add each parameter's squared gradient (one window's) to the Fisher sums; drop the gradient."""
    for name, p in params:
        if p.grad is not None:
            g = p.grad.detach()
            if name in fish:
                fish[name].addcmul_(g, g)
            else:
                fish[name] = g * g
            p.grad = None
