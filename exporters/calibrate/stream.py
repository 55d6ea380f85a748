"""A Hugging Face causal LM run one decoder layer at a time, straight from its checkpoint.

Calibration needs the model's activations and gradients, not the model in memory: the way
GPTQ-style tools run, the model is built on PyTorch's ``meta`` device (shapes, no storage); its
decoder layers are replaced by slots, and everything else (embeddings, final norm, head, rotary
tables: small beside the layers) is materialized with the model's own initializer, then given its
checkpoint weights.  One real layer at a time is materialized from the lazily read checkpoint,
run over every calibration window, and dropped back to ``meta``.

The model's own ``forward`` still does all that is not a layer, so masks (sliding windows too),
position embeddings, embedding scales, final soft-capping and the head are the architecture's, not
a copy: a slot records what the model hands each layer (``capture``), or injects a hidden state
(``logits``), or stops the forward at the first layer's input (``embed_backward``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgellm.errors import BadInput, EdgeLLMError
from edgellm.exporters.io.safetensors_reader import widen


READ_ELEMENTS = 4 << 20       # a checkpoint tensor is copied in a chunk of about this many values at a time


class _Stop(Exception):
    pass


def _torch():
    import torch
    return torch


class _Slot:
    """Stands where decoder layer ``i`` stood; what it does is the stream's current mode."""

    def __new__(cls, stream: "LayerStream", i: int):
        torch = _torch()

        class Slot(torch.nn.Module):
            def forward(self, hidden_states, *args, **kwargs):
                return stream._at_slot(i, hidden_states, args, kwargs)
        return Slot()


def _find_layers(model, n: int):
    """(parent module, attribute) of the ModuleList holding the ``n`` decoder layers."""
    torch = _torch()
    for _, mod in model.named_modules():
        for attr, child in mod.named_children():
            if isinstance(child, torch.nn.ModuleList) and len(child) == n:
                return mod, attr
    raise EdgeLLMError("cannot find the model's decoder layers to calibrate them one at a time")


class LayerStream:
    def __init__(self, model_dir: Path, ckpt, trust_remote_code: bool = False, device: str = "cpu",
                 compute_dtype: str = "float32", parts=None):
        torch = _torch()
        from transformers import AutoConfig, AutoModelForCausalLM

        try:
            config = AutoConfig.from_pretrained(model_dir, trust_remote_code=trust_remote_code)
            with torch.device("meta"):
                model = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code,
                                                         dtype=torch.float32)
        except Exception as e:  # noqa: BLE001 - whatever transformers raises, one line
            raise EdgeLLMError(f"{model_dir}: transformers cannot build the model to calibrate it "
                               f"({type(e).__name__}: {e})") from None
        model.eval()
        self.ckpt, self.model, self.config, self.model_dir = ckpt, model, config, Path(model_dir)
        self.parts = parts      # the family's checkpoint_parts: a fused parameter's checkpoint tensors
        self.device = device
        self._ahead, self._pool = {}, None          # layers being read ahead (load_layer's ``then``)
        self.compute_dtype = getattr(torch, compute_dtype)     # matrix products run in it (autocast)
        self._names = set(ckpt.names())
        n = config.get_text_config().num_hidden_layers
        parent, attr = _find_layers(model, n)
        layers = getattr(parent, attr)
        where = {id(m): name for name, m in model.named_modules()}
        self.prefixes = [where[id(layer)] + "." for layer in layers]
        self.layers = list(layers)
        setattr(parent, attr, torch.nn.ModuleList([_Slot(self, i) for i in range(n)]))
        self._mode, self._record, self._inject, self._caught = "capture", [], None, None
        # the rest: the model's own initializer (buffers: rotary tables, embedding scales), then its
        # weights; an untied head is not even allocated until the head pass wants it (``hold``)
        table = model.get_input_embeddings().weight
        head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        untied = getattr(head, "weight", None) is not None and head.weight is not table
        shapes = {name: tuple(p.shape) for name, p in model.named_parameters()}   # tied weights: once
        # with bfloat16 products the two big matrices are kept in bfloat16 (as checkpoints store
        # them: the lookup is exact, and autocast makes no second copy for the head's product)
        self.big_dtype = torch.bfloat16 if self.compute_dtype == torch.bfloat16 else torch.float32
        table.data = torch.empty(table.shape, dtype=self.big_dtype, device="meta")
        if untied:
            head.weight.data = torch.empty(0, dtype=self.big_dtype, device="meta")
        model.to_empty(device=device)
        with torch.no_grad():
            for module in model.modules():      # buffers (rotary tables, embedding scales) need the
                # initializer; a leaf holding only weights, which the checkpoint fills below, does
                # not (a random normal over a 151,936-token table: 2.7 s of a 0.5B calibration)
                if next(module.children(), None) is None and next(module.buffers(recurse=False), None) is None:
                    continue
                model._init_weights(module)
            model.tie_weights()                             # a tied head shares the embedding again
            self.table = model.get_input_embeddings().weight
            self.head = getattr(model.get_output_embeddings() if head is not None else None, "weight", None)
            self._shapes = {}
            for name, p in model.named_parameters():
                self._shapes[id(p)] = (name, shapes[name])
                if p is not self.head or p is self.table:
                    self._fill(p, name)
        self.base = model.get_decoder() if hasattr(model, "get_decoder") else model.base_model

    @property
    def n_layers(self) -> int:
        return len(self.layers)

    def _stored_name(self, name: str, shape: tuple) -> str:
        """The checkpoint's name for model parameter ``name`` (with or without the base model's
        prefix), its shape checked against the model's."""
        prefix = getattr(self.model, "base_model_prefix", "") + "."
        for cand in (name, name[len(prefix):] if name.startswith(prefix) else prefix + name):
            if cand not in self._names:
                continue
            have = tuple(self.ckpt.info(cand).shape)
            if have != tuple(shape):
                raise EdgeLLMError(f"{cand}: shape {have} in the checkpoint, the model wants {tuple(shape)}")
            return cand
        raise EdgeLLMError(f"{name}: not in the checkpoint")

    def _fill(self, p, name: str) -> None:
        """Copy checkpoint tensor ``name`` into parameter ``p`` (allocated, same shape), a chunk of
        rows at a time: a 151,936-row embedding is never held twice, nor as float32 and bfloat16."""
        torch = _torch()
        shape = tuple(p.shape)
        cand = self._stored_name(name, shape)
        rows = max(1, READ_ELEMENTS // max(1, int(np.prod(shape[1:]))))
        at = 0
        with torch.no_grad():
            for chunk in self.ckpt.read_rows(cand, rows):
                part = torch.from_numpy(np.asarray(chunk, dtype=np.float32))
                if p.dim() == 0:
                    p.copy_(part.reshape(()))
                else:
                    p[at:at + len(part)].copy_(part)
                    at += len(part)

    def _read_layer(self, i: int) -> dict:
        """Layer ``i``'s checkpoint tensors as stored (bfloat16 stays bfloat16: half the bytes to
        hold and to move to a GPU), read in full; the widening happens in ``load_layer``'s copy."""
        out = {}
        for name, p in self.layers[i].named_parameters():
            full = self.prefixes[i] + name
            sources = self.parts(full) if self.parts is not None and full not in self._names else None
            if sources is None:
                out[name] = self._read_whole(self._stored_name(full, tuple(p.shape)))
            else:
                out[name] = self._assembled(full, sources, tuple(p.shape))
        return out

    def _read_whole(self, cand: str):
        """Checkpoint tensor ``cand`` whole, as stored (bfloat16 as torch's bfloat16)."""
        torch = _torch()
        dtype = self.ckpt.stored_dtype(cand)
        raw = np.asarray(next(iter(self.ckpt.read_rows(cand, 1 << 62, raw=True))))
        if dtype == "BF16" and raw.dtype == np.uint16:
            return torch.from_numpy(raw.view(np.int16)).view(torch.bfloat16)
        return torch.from_numpy(raw if raw.dtype.kind == "f" else widen(raw, dtype))

    def _assembled(self, name: str, sources: list[tuple[str, ...]], shape: tuple):
        """A fused parameter from its checkpoint tensors (``checkpoint_parts``): each slice's
        tensors concatenated along rows, the slices stacked."""
        torch = _torch()
        missing = [c for group in sources for c in group if c not in self._names]
        if missing:
            raise BadInput(f"{name}: the checkpoint lacks {missing[0]}")
        if len(sources) == 1 and len(sources[0]) == 1:                # one tensor, renamed
            t = self._read_whole(sources[0][0])
            if tuple(t.shape) != shape:
                raise EdgeLLMError(f"{name}: {sources[0][0]} has shape {tuple(t.shape)}, the model wants {shape}")
            return t
        if len(sources) != shape[0]:
            raise EdgeLLMError(f"{name}: {len(sources)} slices in the checkpoint, the model wants {shape[0]}")
        out = None                  # filled in place, a tensor at a time: the layer is held once, as stored
        for e, group in enumerate(sources):
            at = 0
            for c in group:
                t = self._read_whole(c)
                if out is None:
                    out = torch.empty(shape, dtype=t.dtype)
                if t.dim() != 2 or tuple(t.shape[1:]) != shape[2:] or at + t.shape[0] > shape[1]:
                    raise EdgeLLMError(f"{name}: {c} has shape {tuple(t.shape)}, which does not fit the model's {shape}")
                out[e, at:at + t.shape[0]] = t
                at += t.shape[0]
            if at != shape[1]:
                raise EdgeLLMError(f"{name}: {group[0]} ... make {at} rows, the model wants {shape[1]}")
        return out

    # one layer at a time
    def load_layer(self, i: int, then: int | None = None):
        """Materialize layer ``i`` from the checkpoint; with ``then``, start reading that layer's
        tensors on a thread now, so the read overlaps whatever runs on layer ``i`` (on a GPU the
        read, not the compute, is the layer's time).  Memory: one more layer, as stored."""
        torch = _torch()
        pending = self._ahead.pop(i, None)
        tensors = pending.result() if pending is not None else self._read_layer(i)
        for j in list(self._ahead):                 # a read ahead nobody will take (order changed)
            self._ahead.pop(j).cancel()
        if then is not None and 0 <= then < len(self.layers):
            self._ahead[then] = self._reader().submit(self._read_layer, then)
        layer = self.layers[i].to_empty(device=self.device)
        with torch.no_grad():
            for name, p in layer.named_parameters():
                t = tensors.pop(name)
                p.copy_(t.reshape(p.shape).to(self.device))     # widened where it lands (GPU: after the copy)
        return layer

    def _reader(self):
        if self._pool is None:
            from concurrent.futures import ThreadPoolExecutor
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="edgellm-read-ahead")
        return self._pool

    def close(self) -> None:
        """Stop reading ahead (a read in flight finishes; its tensors are dropped)."""
        for f in self._ahead.values():
            f.cancel()
        self._ahead.clear()
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def drop_layer(self, i: int) -> None:
        self.layers[i].to("meta")

    def outer_matrices(self) -> list:
        """(name, parameter) of the matrices outside the layers (held or not: see ``hold``)."""
        return [(name, p) for name, p in self.model.named_parameters() if len(self._shapes[id(p)][1]) == 2]

    def hold(self, table: bool, head: bool) -> None:
        """Which of the two big outer matrices are in memory: the input embedding table (the
        first layer's inputs, the lookup's gradients) and the head (the loss); one tensor when
        they are tied.  The rest (norms, position tables) stays.  The layer passes need neither."""
        torch = _torch()
        want = {id(self.table): (self.table, table)}
        if self.head is not None:                          # tied: held when either is wanted
            want[id(self.head)] = (self.head, head or want.get(id(self.head), (None, False))[1])
        for p, on in want.values():
            name, shape = self._shapes[id(p)]
            loaded = tuple(p.shape) == shape
            if on and not loaded:
                p.data = torch.empty(shape, dtype=self.big_dtype, device=self.device)
                self._fill(p, name)
            elif not on and loaded:
                p.data = torch.empty(0, dtype=self.big_dtype, device=self.device)

    def release_outer(self) -> None:
        """Free the embeddings, head and buffers: re-running a layer from its stored inputs
        (``run``) needs none of them."""
        self.model.to("meta")

    def _autocast(self):
        torch = _torch()
        return torch.autocast("cuda" if self.device.startswith("cuda") else "cpu", dtype=self.compute_dtype,
                              enabled=self.compute_dtype != torch.float32)

    def run(self, layer, hidden, call):
        args, kwargs = call
        with self._autocast():
            out = layer(hidden, *args, **kwargs)
        out = out[0] if isinstance(out, tuple) else out
        return out.float()

    # what the slots do
    def _at_slot(self, i, hidden, args, kwargs):
        if self._mode == "capture":
            if i == 0:
                self._record.append(hidden.detach().clone())
            self._record.append((args, {k: v for k, v in kwargs.items() if k != "past_key_values"}))
            return hidden
        if self._mode == "catch":
            self._caught = hidden
            raise _Stop
        return self._inject if i == 0 else hidden     # "inject": the last layer's output, as is

    def capture(self, ids):
        """Run window ``ids`` [1, T] up to the layers: (first layer's input, per layer the
        (args, kwargs) the model passes it)."""
        torch = _torch()
        self._mode, self._record = "capture", []
        with torch.no_grad():
            self.base(input_ids=ids, use_cache=False)
        h0, *calls = self._record
        self._record = []
        return h0, calls

    def logits(self, hidden_last, ids):
        """[T, vocab] logits from the last layer's output through the model's own final norm,
        head and soft-capping (``hidden_last`` may require grad)."""
        torch = _torch()
        self._mode, self._inject = "inject", hidden_last
        stand_in = torch.zeros(*ids.shape, self.config.get_text_config().hidden_size, device=self.device)
        try:                # (embeddings in place of ids: the table need not be held; the slot replaces them)
            with self._autocast():
                return self.model(inputs_embeds=stand_in, use_cache=False).logits[0]
        finally:
            self._inject = None

    def head_input(self, hidden_last, ids) -> None:
        """Run ``hidden_last`` through the final norm up to the head's input and stop there: the
        head's input hooks see it; the [T, vocab] product is never made."""
        torch = _torch()
        head = self.model.get_output_embeddings()

        def stop(_mod, _args):
            raise _Stop
        handle = head.register_forward_pre_hook(stop)       # after the statistics hooks: they run first
        try:
            with torch.no_grad():
                self.logits(hidden_last.detach(), ids)
        except _Stop:
            pass
        finally:
            handle.remove()

    def embed_backward(self, ids, grad_h0) -> None:
        """Back-propagate ``grad_h0`` (at the first layer's input) into the embedding weights."""
        self._mode = "catch"
        try:
            self.base(input_ids=ids, use_cache=False)
        except _Stop:
            pass
        caught, self._caught = self._caught, None
        caught.backward(grad_h0.to(caught.dtype))
