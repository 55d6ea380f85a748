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

from edgellm.errors import EdgeLLMError


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
    def __init__(self, model_dir: Path, ckpt, trust_remote_code: bool = False):
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
        self._names = set(ckpt.names())
        n = config.get_text_config().num_hidden_layers
        parent, attr = _find_layers(model, n)
        layers = getattr(parent, attr)
        where = {id(m): name for name, m in model.named_modules()}
        self.prefixes = [where[id(layer)] + "." for layer in layers]
        self.layers = list(layers)
        setattr(parent, attr, torch.nn.ModuleList([_Slot(self, i) for i in range(n)]))
        self._mode, self._record, self._inject, self._caught = "capture", [], None, None
        # the rest: the model's own initializer (buffers: rotary tables, embedding scales), then its weights
        model.to_empty(device="cpu")
        with torch.no_grad():
            for module in model.modules():
                model._init_weights(module)
            model.tie_weights()                             # a tied head shares the embedding again
            for name, p in model.named_parameters():        # tied weights are listed once
                p.copy_(self._read(name, tuple(p.shape)))
        self.base = model.get_decoder() if hasattr(model, "get_decoder") else model.base_model

    @property
    def n_layers(self) -> int:
        return len(self.layers)

    def _read(self, name: str, shape: tuple):
        torch = _torch()
        prefix = getattr(self.model, "base_model_prefix", "") + "."
        names = self._names
        for cand in (name, name[len(prefix):] if name.startswith(prefix) else prefix + name):
            if cand in names:
                arr = np.asarray(self.ckpt.read(cand), dtype=np.float32)
                if tuple(arr.shape) != shape:
                    raise EdgeLLMError(f"{cand}: shape {tuple(arr.shape)} in the checkpoint, the model wants {shape}")
                return torch.from_numpy(arr)
        raise EdgeLLMError(f"{name}: not in the checkpoint")

    # one layer at a time
    def load_layer(self, i: int):
        torch = _torch()
        layer = self.layers[i].to_empty(device="cpu")
        with torch.no_grad():
            for name, p in layer.named_parameters():
                p.copy_(self._read(self.prefixes[i] + name, tuple(p.shape)))
        return layer

    def drop_layer(self, i: int) -> None:
        self.layers[i].to("meta")

    @staticmethod
    def run(layer, hidden, call):
        args, kwargs = call
        out = layer(hidden, *args, **kwargs)
        return out[0] if isinstance(out, tuple) else out

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
        self._mode, self._inject = "inject", hidden_last
        try:
            return self.model(input_ids=ids, use_cache=False).logits[0]
        finally:
            self._inject = None

    def embed_backward(self, ids, grad_h0) -> None:
        """Back-propagate ``grad_h0`` (at the first layer's input) into the embedding weights."""
        self._mode = "catch"
        try:
            self.base(input_ids=ids, use_cache=False)
        except _Stop:
            pass
        caught, self._caught = self._caught, None
        caught.backward(grad_h0)
