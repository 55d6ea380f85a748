"""IBM Granite 3.x dense models: a llama layout with four scalar multipliers on the embedding,
the attention scores, each residual branch and the logits (which are divided by it)."""

from __future__ import annotations

from edgellm.models.families.llama import Llama
from edgellm.models.families.registry import register


@register
class Granite(Llama):
    model_types = ("granite",)
    gguf_arch = "granite"
    supports = frozenset({"gguf", "onnx"})

    def _multiplier(self, key: str) -> float | None:
        value = self.cfg.get(key)
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None

    # -- GGUF: the converter names them *_scale (convert_hf_to_gguf.py GraniteModel) -----------
    def add_metadata(self, w) -> None:
        super().add_metadata(w)
        if (v := self._multiplier("attention_multiplier")):
            w.add_attention_scale(v)
        if (v := self._multiplier("embedding_multiplier")):
            w.add_embedding_scale(v)
        if (v := self._multiplier("residual_multiplier")):
            w.add_residual_scale(v)
        if (v := self._multiplier("logits_scaling")):
            w.add_logit_scale(v)

    # -- ONNX ---------------------------------------------------------------------------------
    @property
    def attention_scale(self) -> float:
        v = self._multiplier("attention_multiplier")
        return v if v else super().attention_scale

    @property
    def embed_scale(self) -> float | None:
        return self._multiplier("embedding_multiplier")

    @property
    def residual_scale(self) -> float | None:
        return self._multiplier("residual_multiplier")

    @property
    def logit_scale(self) -> float | None:
        return self._multiplier("logits_scaling")
