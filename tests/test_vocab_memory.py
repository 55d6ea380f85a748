"""Memory that does not grow with the vocabulary (issue 26, item 5): verification, eval and the
quality benchmark hold logits a slice of positions at a time.  The slices must give exactly what
whole arrays gave, for every family's head (Gemma 2's soft-capping, Granite's scaling, GPT-2's
``transformer`` body)."""

from __future__ import annotations

import numpy as np
import pytest

from edgellm import metrics


def test_sliced_agreement_equals_the_whole_arrays():
    rng = np.random.default_rng(0)
    ref = rng.standard_normal((300, 5000)).astype(np.float32)
    cand = ref + 0.1 * rng.standard_normal(ref.shape).astype(np.float32)
    tokens = rng.integers(0, 5000, 300)
    whole = metrics.compare(ref, cand, tokens)
    t = metrics.Tally()
    for a in range(0, 300, 7):                      # odd slices, and Tally slicing inside them again
        nxt = np.append(tokens[1:], -1)[a:a + 7]
        t.add(ref[a:a + 7], cand[a:a + 7], nxt)
    sliced = t.result()
    assert sliced.positions == whole.positions == 300
    for f in ("mean_kld", "p99_kld", "top1_agreement", "ppl_reference", "ppl_candidate", "max_abs_logit_diff"):
        assert getattr(sliced, f) == pytest.approx(getattr(whole, f), rel=1e-12), f


def test_slices_stay_small_for_any_vocabulary():
    for vocab in (1024, 32000, 151936, 262144, 1 << 20):
        assert 8 * metrics.rows_per_slice(vocab) * vocab <= max(metrics.SLICE_BYTES, 8 * vocab)


@pytest.mark.parametrize("arch", ["llama", "gemma2", "granite", "gpt2"])
def test_hf_logit_slices_equal_the_full_forward(tiny, arch):
    from edgellm.exporters.io.reference import load_reference
    from edgellm.exporters.verify.verify import _hf_logits, hf_logit_slices

    tok, hf = load_reference(tiny(arch))
    ids = list(range(5, 5 + 50))
    full = _hf_logits(hf, ids)
    parts = list(hf_logit_slices(hf, ids, rows=7))
    assert len(parts) == 8 and [a for a, _ in parts] == list(range(0, 50, 7))
    np.testing.assert_allclose(np.concatenate([p for _, p in parts]), full, rtol=1e-5, atol=1e-5)
    assert not hasattr(getattr(hf, hf.base_model_prefix), "__dict__") or \
        "forward" not in vars(getattr(hf, hf.base_model_prefix))          # the body is itself again


def test_llama_cpp_scores_a_batch_at_a_time_and_the_slices_equal_the_whole(tmp_path):
    """The GGUF backend opened for scoring decodes SCORING_BATCH positions at a time and hands each
    batch's logits over as it comes (no window-sized buffer); sliced, aligned with another slicing,
    they are the logits the runtime computes for the window."""
    from edgellm.formats.gguf import Gguf
    from edgellm.runtime.llamacpp import SCORING_BATCH, LlamaCppModel
    from edgellm.runtime.synthetic_gguf import Shape, write

    assert Gguf.scoring_rows == SCORING_BATCH
    path = write(tmp_path / "m.gguf", Shape(hidden=64, ffn=128, layers=2, heads=2, kv_heads=1, vocab=300, context=256))
    m = LlamaCppModel.open(path, n_ctx=256, threads=2, scoring=True)
    ids = [int(i) for i in np.random.default_rng(0).integers(3, 300, 150)]
    parts = list(m.logit_slices(ids))
    assert [a for a, _ in parts] == [0, 64, 128] and [len(p) for _, p in parts] == [64, 64, 22]
    whole = m.logits(ids)
    np.testing.assert_allclose(np.concatenate([p for _, p in parts]), whole, rtol=1e-5, atol=1e-5)
    one = LlamaCppModel.open(path, n_ctx=256, threads=2)           # one 150-token batch, every position
    np.testing.assert_allclose(one.logits(ids), whole, rtol=2e-3, atol=2e-3)
    odd = ((a, whole[a:a + 7]) for a in range(0, 150, 7))
    got = list(metrics.aligned(m.logit_slices(ids), odd))
    assert [a for a, *_ in got][:4] == [0, 7, 14, 21] and sum(len(x) for _, x, _ in got) == 150
    for a, x, y in got:
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-5)


def test_verification_memory_counts_the_runtimes_batch_not_the_window():
    from edgellm import models
    from edgellm.exporters.verify.memory import verification_need

    g = models.load_config("google/gemma-3-270m-it")                       # vocabulary 262,144
    whole, batched = verification_need(g, 300 << 20), verification_need(g, 300 << 20, scoring_rows=64)
    assert whole - batched > 1.3 * (1 << 30) * 1.15 * (448 / 512)          # three 448-row logit buffers fewer
