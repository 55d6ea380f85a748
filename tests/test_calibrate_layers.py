"""Calibration a decoder layer at a time gives the whole-model statistics (importance, XᵀX,
Fisher diagonal: the per-window one of ``collect`` when asked) for every architecture, with one
layer in memory at a time."""

import os

import numpy as np
import pytest

from edgellm.exporters.calibrate import collect
from edgellm.exporters.calibrate import collect_layerwise
from edgellm.exporters.io.checkpoint import open_checkpoint
from edgellm.textdata import training_text

TEXT = training_text(200_000)


def _close(a: np.ndarray, b: np.ndarray, rel: float) -> bool:
    return float(np.abs(a - b).max()) <= rel * float(np.abs(b).max()) + 1e-12


def _same_inputs(got, want, rel: float) -> None:
    """Importance vectors and XᵀX of ``got`` within ``rel`` of ``want``'s, tensor by tensor."""
    for name in want.imatrix:
        assert _close(got.imatrix[name], want.imatrix[name], rel), name
        assert _close(got.hessian[name], want.hessian[name], rel), name


@pytest.mark.parametrize("arch", ["llama", "gemma2", "gpt2", "phi3"])
def test_layer_at_a_time_matches_the_whole_model(tiny, arch):
    folder = tiny(arch)
    whole = collect(folder, TEXT, context=64, max_windows=3, hessian=True, fisher=True, seed=1)
    layered = collect_layerwise(folder, open_checkpoint(folder), TEXT, context=64, max_windows=3, hessian=True,
                                fisher=True, seed=1, precision="float32", fisher_per="window", fisher_windows=None)
    assert (layered.tokens, layered.windows, layered.context) == (whole.tokens, whole.windows, whole.context)
    assert set(layered.imatrix) == set(whole.imatrix) and set(layered.hessian) == set(whole.hessian)
    _same_inputs(layered, whole, 1e-4)
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
    import edgellm.exporters.calibrate.layers as cl

    folder = tiny("qwen2")
    whole = collect_layerwise(folder, open_checkpoint(folder), TEXT, context=64, max_windows=2, hessian=True,
                              fisher=True, seed=1, precision="float32")
    monkeypatch.setattr(cl, "LOGITS_BYTES", 4 * 768 * 16)           # 16 tokens a slice
    sliced = collect_layerwise(folder, open_checkpoint(folder), TEXT, context=64, max_windows=2, hessian=True,
                               fisher=True, seed=1, precision="float32")
    _same_inputs(sliced, whole, 1e-5)
    for name in whole.fisher:
        ratio = sliced.fisher[name].sum() / whole.fisher[name].sum()
        assert 0.5 < ratio < 2, (name, ratio)


@pytest.mark.parametrize("arch,tie", [("qwen2", True), ("llama", False)])
def test_only_the_sampled_rows_fisher_is_computed_and_the_costs_are_the_same(tiny, monkeypatch, arch, tie):
    """Where the cost estimate reads a sample of a tensor's rows (the embedding and head of a big
    vocabulary), only those rows' Fisher is computed (the head's from its input and output
    gradient, the lookup's from sparse gradients) and the costs equal those of the whole Fisher."""
    import edgellm.exporters.gguf.mix as mix
    from edgellm import models
    from edgellm.models.families import family_for

    monkeypatch.setattr(mix, "SAMPLE_ROWS", 40)
    folder = tiny(arch, tied=tie)
    model, ckpt = models.load_config(str(folder)), open_checkpoint(folder)
    gguf_arch = family_for(model, "gguf")
    whole = collect_layerwise(folder, ckpt, TEXT, context=64, max_windows=2, hessian=False, fisher=True, seed=1,
                              precision="float32")
    dense = mix.Costs(model, ckpt, gguf_arch, whole.imatrix)
    for name, f in whole.fisher.items():
        dense.add(name, f)
    seen = {}

    def sink(cal):
        table = mix.Costs(model, ckpt, gguf_arch, cal.imatrix)
        add = table.add

        def spy(name, fisher, rows=None):
            seen[name] = (fisher.shape, rows)
            add(name, fisher, rows)
        table.add = spy
        cal.costs = table
        return table

    sampled = collect_layerwise(folder, ckpt, TEXT, context=64, max_windows=2, hessian=False, fisher=True, seed=1,
                                fisher_sink=sink, precision="float32").costs
    big = [n for n, (shape, rows) in seen.items() if rows is not None]
    assert big and all(seen[n][0][0] == 40 for n in big)              # the embedding (and head): 40 rows
    assert set(sampled.costs) == set(dense.costs)
    for name, costs in dense.costs.items():
        for t, c in costs.items():
            assert abs(sampled.costs[name][t] - c) <= 1e-3 * abs(c) + 1e-12, (name, t)


def test_bfloat16_products_give_close_statistics(tiny):
    """Where bfloat16 is native (``auto`` on AMX or a GPU), the matrix products run in it: the importance and XᵀX
    stay within a few percent of float32's, the Fisher within its sampling noise."""
    folder = tiny("llama")
    ref = collect_layerwise(folder, open_checkpoint(folder), TEXT, context=64, max_windows=3, hessian=True,
                            fisher=True, seed=1, precision="float32")
    low = collect_layerwise(folder, open_checkpoint(folder), TEXT, context=64, max_windows=3, hessian=True,
                            fisher=True, seed=1, precision="bfloat16")
    assert (ref.precision, low.precision) == ("float32", "bfloat16")
    _same_inputs(low, ref, 0.05)
    for name in ref.fisher:
        ratio = low.fisher[name].sum() / ref.fisher[name].sum()
        assert 0.7 < ratio < 1.4, (name, ratio)


def test_the_fisher_on_a_subset_of_windows_leaves_the_rest_unchanged(tiny):
    """fisher_windows=2 of 6: the importance and XᵀX still come from all six windows (the same as
    with the Fisher on all of them), the Fisher from two, averaged over their tokens."""
    folder = tiny("qwen2")
    kw = dict(context=64, max_windows=6, hessian=True, fisher=True, seed=1, precision="float32")
    every = collect_layerwise(folder, open_checkpoint(folder), TEXT, fisher_windows=None, **kw)
    two = collect_layerwise(folder, open_checkpoint(folder), TEXT, fisher_windows=2, **kw)
    assert (every.fisher_tokens, two.fisher_tokens) == (6 * 64, 2 * 64) and two.tokens == 6 * 64
    _same_inputs(two, every, 1e-5)
    for name in every.fisher:
        ratio = two.fisher[name].sum() / every.fisher[name].sum()
        assert 0.3 < ratio < 3, (name, ratio)


def test_xtx_on_a_subset_of_windows_leaves_the_importance_whole(tiny):
    """hessian_windows=2 of 6: the importance still from all six windows, XᵀX from two (spread:
    the first and the fourth), so it is a different average of the same kind."""
    folder = tiny("qwen2")
    kw = dict(context=64, max_windows=6, hessian=True, fisher=False, seed=1, precision="float32")
    every = collect_layerwise(folder, open_checkpoint(folder), TEXT, hessian_windows=0, **kw)
    two = collect_layerwise(folder, open_checkpoint(folder), TEXT, hessian_windows=2, **kw)
    assert (every.hessian_tokens, two.hessian_tokens) == (6 * 64, 2 * 64)
    for name in every.imatrix:
        assert _close(two.imatrix[name], every.imatrix[name], 1e-5), name
    layer_names = [n for n in every.hessian if two.hessian.group(n) is not None]
    assert layer_names and all(two.hessian[n].shape == every.hessian[n].shape for n in layer_names)
    assert any(not _close(two.hessian[n], every.hessian[n], 1e-3) for n in layer_names)
    for n in layer_names:                                   # still a second moment: symmetric, PSD diagonal
        h = two.hessian[n]
        assert np.allclose(h, h.T, atol=1e-6 * np.abs(h).max()) and (np.diag(h) >= 0).all()


@pytest.mark.parametrize("arch", ["qwen2", "gpt2"])
def test_xtx_gathered_in_the_forward_pass_is_the_rerun_one(tiny, monkeypatch, arch):
    """XᵀX kept on disk by the forward pass (no second pass) equals the writer's re-run of each layer,
    on the same subset of windows; a disk that fills half way leaves the later layers to the re-run."""
    import edgellm.exporters.calibrate.layers as cl

    folder = tiny(arch)
    kw = dict(context=64, max_windows=6, hessian=True, fisher=False, seed=1, precision="float32", hessian_windows=2)
    first = collect_layerwise(folder, open_checkpoint(folder), TEXT, **kw)
    assert first.hessian.grams is not None and len(first.hessian.grams.where) == len(set(first.hessian.layer_of.values()))
    monkeypatch.setattr(cl, "DISK_SPARE", 1 << 60)                  # no room: every layer re-run
    rerun = collect_layerwise(folder, open_checkpoint(folder), TEXT, **kw)
    assert rerun.hessian.grams is None
    write = cl._Grams._write

    def no_space(fd, data, offset):
        raise OSError(28, "No space left on device")

    def full_after_one_layer(self, i, grams, shared):
        if i > 0:
            self._pwrite = no_space
        return write(self, i, grams, shared)
    monkeypatch.setattr(cl, "DISK_SPARE", 0)
    monkeypatch.setattr(cl._Grams, "_write", full_after_one_layer)
    half = collect_layerwise(folder, open_checkpoint(folder), TEXT, **kw)
    assert list(half.hessian.grams.where) == [0]
    assert set(first.hessian) == set(rerun.hessian) == set(half.hessian)
    for name in rerun.hessian:
        assert _close(first.hessian[name], rerun.hessian[name], 1e-5), name
        assert _close(half.hessian[name], rerun.hessian[name], 1e-5), name


def test_xtx_from_bfloat16_inputs_stays_positive_definite():
    """XᵀX made by oneDNN from bfloat16-rounded inputs (the layers' products are bfloat16) is the
    float32 sum of the rounded inputs' products: positive semi-definite to float32 rounding, even
    with activation columns hundreds of times the others (a bfloat16 *result* was not, on the real
    SmolLM2: see ``add_gram``)."""
    import torch

    from edgellm.exporters.calibrate.common import add_gram, bf16_inputs, gram_done

    g = torch.Generator().manual_seed(0)
    x = torch.randn(512, 2560, generator=g) @ torch.randn(2560, 2560, generator=g) / 50     # correlated inputs
    x[:, :8] *= 300                                                                         # outlier columns
    grams = {}
    with bf16_inputs(True):
        for part in x.split(128):
            add_gram(grams, "w", part)
    h = gram_done(grams["w"]).double()
    exact = x.double().T @ x.double()
    assert torch.allclose(h, h.T) and float((h - exact).abs().max()) <= 4e-3 * float(exact.abs().max())
    if torch.ops.mkldnn._is_mkldnn_bf16_supported():            # the rounded inputs' own XᵀX
        rounded = x.bfloat16().double()
        assert float((h - rounded.T @ rounded).abs().max()) <= 1e-5 * float(exact.abs().max())

    assert float(torch.linalg.eigvalsh(h).min()) > -1e-6 * float(exact.abs().max())   # PSD, to rounding


def test_states_keep_every_boundary_only_for_the_windows_rerun(tmp_path):
    import torch

    from edgellm.exporters.calibrate import layers as cl
    from edgellm.exporters.calibrate.memory import states_blocks

    st = cl._States(tmp_path, boundaries=4, windows=5, shape=(2, 3), kept={1, 3})
    assert os.fstat(st.fd).st_size == states_blocks(4, 5, 2) * 24 == (4 * 2 + 2 * 3) * 24
    for b in range(4):                                      # a forward: boundary b read, b + 1 written
        for w in range(5):
            st.put(b, w, torch.full((1, 2, 3), 10.0 * b + w))
    for b in range(4):
        for w in (1, 3):
            assert float(st.get(b, w)[0, 0, 0]) == 10 * b + w
    assert float(st.get(3, 0)[0, 0, 0]) == 30 and float(st.get(2, 4)[0, 0, 0]) == 24   # the last two only
    st.close()
    assert not list(tmp_path.iterdir())                     # unlinked from the start


def test_wide_xtx_from_its_upper_strips_is_the_full_product():
    import torch

    from edgellm.exporters.calibrate.common import GRAM_MIN_BLOCKED, add_gram, gram_done

    torch.manual_seed(0)
    for n in (GRAM_MIN_BLOCKED - 8, GRAM_MIN_BLOCKED + 37):
        x = torch.randn(96, n)
        grams = {}
        add_gram(grams, "w", x[:40])
        add_gram(grams, "w", x[40:])
        full = (x.T @ x).double()
        assert float((gram_done(grams["w"]).double() - full).abs().max()) <= 1e-4 * float(full.abs().max())


def test_phases_count_each_second_once():
    import time

    from edgellm.exporters.calibrate.common import Phases

    ph = Phases()
    with ph("outer"):
        time.sleep(0.02)
        with ph("inner"):
            time.sleep(0.05)
        time.sleep(0.02)
    with ph("inner"):
        time.sleep(0.01)
    s = ph.to_dict()
    assert 0.035 <= s["outer"] < 0.055 and 0.055 <= s["inner"] < 0.08, s


@pytest.mark.parametrize("arch,tie", [("llama", False), ("gpt2", True)])
def test_the_per_token_fisher_is_the_windows_squared_gradient_for_one_token_windows(tiny, arch, tie):
    """With one token a window, a window's gradient g xᵀ squared is g² (x²)ᵀ: the per-token
    Fisher (hooks on the linear layers, GPT-2's Conv1D and the lookups, no weight gradients) must
    give the same diagonal for every tensor, the head and the (tied) table included; with longer
    windows it leaves the window's cross terms out but keeps the size."""
    folder = tiny(arch, tied=tie)
    kw = dict(hessian=False, fisher=True, seed=3, precision="float32", fisher_windows=0)
    one = dict(context=1, max_windows=12, **kw)
    window = collect_layerwise(folder, open_checkpoint(folder), TEXT, fisher_per="window", **one)
    token = collect_layerwise(folder, open_checkpoint(folder), TEXT, fisher_per="token", **one)
    assert set(token.fisher) == set(window.fisher) and window.fisher_tokens == 12
    for name in window.fisher:
        assert token.fisher[name].shape == window.fisher[name].shape, name
        assert _close(token.fisher[name], window.fisher[name], 1e-4), name
    if arch == "llama":                       # windows of many tokens: the same size
        longer = dict(context=64, max_windows=2, **kw)
        window = collect_layerwise(folder, open_checkpoint(folder), TEXT, fisher_per="window", **longer)
        token = collect_layerwise(folder, open_checkpoint(folder), TEXT, fisher_per="token", **longer)
        for name in window.fisher:
            ratio = token.fisher[name].sum() / window.fisher[name].sum()
            assert 0.2 < ratio < 5, (name, ratio)
    with pytest.raises(ValueError, match="fisher_per"):
        collect_layerwise(folder, open_checkpoint(folder), TEXT, fisher_per="layer", **one)


def test_auto_precision_on_the_cpu_is_whichever_this_cpu_multiplies_faster(monkeypatch):
    """No rule about instruction sets: bfloat16 was slower than float32 on a Xeon held to
    AVX512-BF16 and 2.5x faster on a Zen 4 EPYC with the same flag, so it is measured."""
    from edgellm.exporters.calibrate import layers as cl

    assert isinstance(cl.bf16_is_faster(), bool)                      # measured, once per process
    monkeypatch.setattr(cl, "bf16_is_faster", lambda: True)
    assert cl.compute_dtype("auto", "cpu") == "bfloat16"
    monkeypatch.setattr(cl, "bf16_is_faster", lambda: False)
    assert cl.compute_dtype("auto", "cpu") == "float32"
    assert cl.compute_dtype("bfloat16", "cpu") == "bfloat16"          # asked for: as asked


@pytest.mark.parametrize("bf16_per_row, expected, full_bf16_timed", [
    (0.37e-3 / 512 * 240, False, False),    # no bfloat16 kernel (AVX2-only EPYC: 240x slower): a slice answers
    (0.37e-3 / 512 / 2.5, True, True),      # 2.5x faster (a Zen 4 with AVX512-BF16): bfloat16
    (0.37e-3 / 512 / 1.1, False, True),     # barely faster: not worth the precision
])
def test_the_bfloat16_probe_stops_early_where_bfloat16_has_no_fast_kernel(bf16_per_row, expected, full_bf16_timed):
    """On a CPU whose torch has no bfloat16 kernel the old probe timed six full bfloat16 products:
    34 s of every calibrated export on a 2-core AVX2 EPYC.  Now a 32nd of the rows is timed
    first, and the full product only where bfloat16 might win."""
    from edgellm.exporters.calibrate import layers as cl

    asked = []

    def seconds(dtype, rows):
        asked.append((dtype, rows))
        return rows * (0.37e-3 / 512 if dtype == "f32" else bf16_per_row)

    assert cl.bf16_wins(seconds, "f32", "bf16", 512, 5) is expected
    assert (("bf16", 512) in asked) is full_bf16_timed
    assert ("bf16", 16) in asked                                     # the slice first, always


@pytest.mark.parametrize("stored", ["F32", "BF16"])
def test_a_layer_read_ahead_is_the_layer_read_now(tiny, tmp_path, stored):
    """``load_layer(i, then=j)`` starts reading layer j on a thread while i runs; the layer it
    later gives is the checkpoint's, bfloat16 widened exactly, and a read ahead that the next
    load does not take is dropped."""
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    from edgellm.exporters.calibrate.stream import LayerStream

    src = tiny("llama")
    folder = tmp_path / "model"
    shutil.copytree(src, folder)
    weights = load_file(str(folder / "model.safetensors"))
    dtype = torch.bfloat16 if stored == "BF16" else torch.float32
    save_file({k: v.to(dtype).contiguous() for k, v in weights.items()}, str(folder / "model.safetensors"))
    ckpt = open_checkpoint(folder)
    stream = LayerStream(folder, ckpt)
    try:
        layer = stream.load_layer(0, then=1)
        assert set(stream._ahead) == {1}
        stream.drop_layer(0)
        layer = stream.load_layer(1, then=0)            # taken from the read ahead
        assert set(stream._ahead) == {0}
        for name, p in layer.named_parameters():
            want = weights[stream.prefixes[1] + name].to(dtype).float()
            assert p.dtype == torch.float32 and torch.equal(p.detach(), want), name
        stream.drop_layer(1)
        stream.load_layer(1)                            # not the one read ahead: that one is dropped
        assert not stream._ahead
    finally:
        stream.close()


def test_costs_worked_out_beside_the_calibration_are_the_same(tiny):
    """On a GPU the cost table is worked out by a thread while the backward pass goes on: the
    table is the one worked out in line, and its phase is recorded."""
    import edgellm.exporters.gguf.mix as mix
    from edgellm import models
    from edgellm.exporters.calibrate.common import Phases
    from edgellm.models.families import family_for

    folder = tiny("llama")
    model, ckpt = models.load_config(str(folder)), open_checkpoint(folder)
    arch = family_for(model, "gguf")
    cal = collect_layerwise(folder, ckpt, TEXT, context=64, max_windows=2, hessian=False, fisher=True, seed=1,
                            precision="float32")
    inline, phases = mix.Costs(model, ckpt, arch, cal.imatrix), Phases()
    beside = mix.Costs(model, ckpt, arch, cal.imatrix, background=True, phases=phases)
    beside.QUEUED_BYTES = 1                                     # the calibration waits for the thread
    for name, f in cal.fisher.items():
        inline.add(name, f)
        beside.add(name, f)
        queued = [n for _, n in beside._futures]                # a bounded queue: never every tensor's Fisher
        assert len(queued) == 1 or sum(queued) <= beside.QUEUED_BYTES
    assert beside.complete().costs == inline.complete().costs
    assert phases.seconds["cost table (beside the GPU)"] > 0 and beside._pool is None


def test_a_failed_cost_in_the_background_stops_the_thread(tiny):
    """A tensor whose costs fail in the background thread: the error reaches the calibration at
    its next hand-over, and the queued rest is not worked out."""
    import edgellm.exporters.gguf.mix as mix
    from edgellm import models
    from edgellm.models.families import family_for

    folder = tiny("llama")
    model, ckpt = models.load_config(str(folder)), open_checkpoint(folder)
    costs = mix.Costs(model, ckpt, family_for(model, "gguf"), {}, background=True)
    costs.QUEUED_BYTES = 1

    def fail(*args):
        raise RuntimeError("a ggml round trip failed")
    costs._timed_add = fail
    names = [e.hf_name for e in costs.quantized]
    costs.add(names[0], np.ones(costs.quantized[0].shape, np.float32))
    with pytest.raises(RuntimeError, match="round trip"):
        costs.add(names[1], np.ones(costs.quantized[1].shape, np.float32))
    assert costs._pool is None and costs._futures == []
