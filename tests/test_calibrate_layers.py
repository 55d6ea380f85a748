"""Calibration a decoder layer at a time gives the whole-model statistics (importance, XᵀX,
Fisher diagonal) for every architecture, with one layer in memory at a time."""

import numpy as np
import pytest

from edgellm.exporters.calibrate import collect
from edgellm.exporters.calibrate_layers import collect_layerwise
from edgellm.exporters.io.checkpoint import open_checkpoint
from edgellm.textdata import training_text

TEXT = training_text(200_000)


def _close(a: np.ndarray, b: np.ndarray, rel: float) -> bool:
    return float(np.abs(a - b).max()) <= rel * float(np.abs(b).max()) + 1e-12


@pytest.mark.parametrize("arch", ["llama", "gemma2", "gpt2", "phi3"])
def test_layer_at_a_time_matches_the_whole_model(tiny, arch):
    folder = tiny(arch)
    whole = collect(folder, TEXT, context=64, max_windows=3, hessian=True, fisher=True, seed=1)
    layered = collect_layerwise(folder, open_checkpoint(folder), TEXT, context=64, max_windows=3, hessian=True,
                                fisher=True, seed=1)
    assert (layered.tokens, layered.windows, layered.context) == (whole.tokens, whole.windows, whole.context)
    assert set(layered.imatrix) == set(whole.imatrix) and set(layered.hessian) == set(whole.hessian)
    for name in whole.imatrix:
        assert _close(layered.imatrix[name], whole.imatrix[name], 1e-4), name
        assert _close(layered.hessian[name], whole.hessian[name], 1e-4), name
    assert set(layered.fisher) == set(whole.fisher)
    tied = {n for n in whole.fisher if "embed" in n or "wte" in n}
    for name in whole.fisher:
        if name in tied:
            continue                          # squared apart from the head's gradient (see the module)
        assert _close(layered.fisher[name], whole.fisher[name], 1e-3), name
    for name in tied:                         # the cross term aside, the same magnitude
        ratio = layered.fisher[name].sum() / whole.fisher[name].sum()
        assert 0.5 < ratio < 2, (name, ratio)


def test_the_heads_logits_in_slices_give_the_same_statistics(tiny, monkeypatch):
    """A big vocabulary's logits are computed a slice of tokens at a time (the loss is a sum over
    tokens): the importance and XᵀX are the same; the Fisher the same in size (the tokens sampled
    from the model's predictions are drawn slice by slice)."""
    import edgellm.exporters.calibrate_layers as cl

    folder = tiny("qwen2")
    whole = collect_layerwise(folder, open_checkpoint(folder), TEXT, context=64, max_windows=2, hessian=True,
                              fisher=True, seed=1)
    monkeypatch.setattr(cl, "LOGITS_BYTES", 4 * 768 * 16)           # 16 tokens a slice
    sliced = collect_layerwise(folder, open_checkpoint(folder), TEXT, context=64, max_windows=2, hessian=True,
                               fisher=True, seed=1)
    for name in whole.imatrix:
        assert _close(sliced.imatrix[name], whole.imatrix[name], 1e-5), name
        assert _close(sliced.hessian[name], whole.hessian[name], 1e-5), name
    for name in whole.fisher:
        ratio = sliced.fisher[name].sum() / whole.fisher[name].sum()
        assert 0.5 < ratio < 2, (name, ratio)
