"""Calibration: what the model's own activations say about which weights matter.

Public surface (everything else in the package is its own business):

- ``CalibrationData``: what an export calibrates on, and ``stats()`` that gathers the statistics
  once per command (a decoder layer at a time: ``layers.collect_layerwise``);
- ``Calibration``: the statistics (importance per input column, XᵀX, the Fisher diagonal);
- ``collect`` (the whole model at once: the reference ``collect_layerwise`` is tested against);
- ``need`` / ``preflight``: the memory and disk a calibration takes, predicted and checked before work;
- ``calibration_windows``, ``default_text``, ``compute_dtype``.

Layers of the package, each importing only those before it: ``common`` -> ``fisher``, ``memory``,
``stream`` -> ``layers``, ``whole`` -> this module.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from edgellm.exporters.calibrate.common import EXPERT_PRIOR_TOKENS, Calibration, calibration_windows, default_text
from edgellm.exporters.calibrate.memory import CalibrationNeed, need, preflight

__all__ = ["Calibration", "CalibrationData", "CalibrationNeed", "calibration_windows", "collect",
           "collect_layerwise", "compute_dtype", "default_text", "need", "preflight"]


def collect(*args, **kw):
    from edgellm.exporters.calibrate.whole import collect as whole
    return whole(*args, **kw)


def collect_layerwise(*args, **kw):
    from edgellm.exporters.calibrate.layers import collect_layerwise as layerwise
    return layerwise(*args, **kw)


def compute_dtype(precision: str, device: str) -> str:
    from edgellm.exporters.calibrate.layers import compute_dtype as dtype
    return dtype(precision, device)


@dataclass
class CalibrationData:
    """What an export calibrates on; the statistics, once gathered, are kept for the next
    candidate of the same command (a quality gate may export several)."""
    text: str | None = None          # None: the default (edgellm.textdata's training split)
    source: str = "default: Python standard library source (edgellm.textdata training split)"
    windows: int = 16
    context: int = 512
    device: str = "auto"             # where the statistics are computed (compute.resolve)
    precision: str = "auto"          # the products' type (layers.compute_dtype)
    fisher_windows: int | None = None    # windows the Fisher is estimated on (None: layers.FISHER_WINDOWS; 0: all)
    fisher_per: str | None = None    # "token" or "window" (None: layers.FISHER_PER)
    hessian_windows: int | None = None   # windows GPTQ's XᵀX is gathered on (None: layers.HESSIAN_WINDOWS; 0: all)
    _done: list = field(default_factory=list)

    def stats(self, model_dir: Path, hessian: bool = False, fisher: bool = False, ckpt=None, sink=None,
              **kw) -> Calibration:
        """Gathered a decoder layer at a time (``layers``); ``sink(cal)`` -> what takes
        each tensor's Fisher as it is done instead of keeping it in ``cal.fisher`` (see there)."""
        from edgellm.exporters.io.checkpoint import open_checkpoint

        for (folder, h, f), cal in self._done:
            if folder == str(model_dir) and (h or not hessian) and (f or not fisher):
                return cal
        cal = collect_layerwise(Path(model_dir), ckpt or open_checkpoint(Path(model_dir)), self.text, self.context,
                                self.windows, hessian=hessian, fisher=fisher, fisher_sink=sink,
                                device=self.device, precision=self.precision,
                                **({"fisher_windows": self.fisher_windows} if self.fisher_windows is not None else {}),
                                **({"fisher_per": self.fisher_per} if self.fisher_per else {}),
                                **({"hessian_windows": self.hessian_windows}
                                   if self.hessian_windows is not None else {}),
                                **kw)
        self._done.append(((str(model_dir), hessian, fisher), cal))
        return cal

    def check(self, model_dir: Path, context: int, trust_remote_code: bool = False) -> None:
        """The text's faults (too short, not the model's vocabulary) before any work."""
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=trust_remote_code)
        calibration_windows(tok, default_text() if self.text is None else self.text, context, self.windows)

    def describe(self, cal: Calibration) -> dict:
        return {"text": self.source, "tokens": cal.tokens, "windows": cal.windows, "context": cal.context,
                "device": cal.device, "precision": cal.precision, "fisher_tokens": cal.fisher_tokens,
                "fisher_per": cal.fisher_per, "hessian_tokens": cal.hessian_tokens,
                "seconds": cal.phases.seconds,     # the live record: the writer's phases (XᵀX, GPTQ) come later
                **({"experts": _experts_record(cal.experts)} if cal.experts else {})}


def _experts_record(layers: dict) -> dict:
    """A mixture's routing over the calibration text: per layer and over all, experts no token
    reached (their gate/up importance is the layer's all-token one; their down projection is
    rounded without weights: ``common.ExpertStats``) and the fewest tokens an expert got."""
    return {"per_expert": "each expert's importance from the tokens routed to it (llama.cpp's imatrix "
                          f"counting), shrunk toward a prior by {EXPERT_PRIOR_TOKENS} tokens' weight; an expert no token reached: "
                          "gate/up weighted by every token's statistics, down rounded without weights",
            "layers": len(layers), "experts_per_layer": max(s["experts"] for s in layers.values()),
            "unreached": sum(s["unreached"] for s in layers.values()),
            "min_tokens": min(s["min_tokens"] for s in layers.values()),
            "per_layer": layers}
