"""The cost table's sample (gguf.mix.tensor_costs): runs of columns that ggml quantizes on their
own, so a big tensor's predicted loss per type is estimated from a bounded number of weights."""

import numpy as np
import pytest

from edgellm.exporters.gguf import mix

K_TYPES = ("Q2_K", "Q3_K", "IQ4_XS", "Q4_K", "Q5_K", "Q6_K", "Q8_0")


@pytest.mark.parametrize("cols, unit", [(1024, 256), (896, 224), (384, 192), (96, 96)])
def test_the_run_is_a_super_block_where_the_row_has_them(cols, unit):
    assert mix.sample_unit(cols) == unit


def test_a_super_block_quantizes_alone_as_inside_its_row():
    # the claim the estimate rests on: ggml's K-quants (and IQ4_NL's 32-blocks) see only the run
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((16, 1024)) * 0.02).astype(np.float32)
    imatrix = rng.random(1024).astype(np.float32) + 0.1
    for t in K_TYPES + ("IQ4_NL",):
        whole = mix.roundtrip(w, t, imatrix)
        run = mix.roundtrip(np.ascontiguousarray(w[:, 256:512]), t, np.ascontiguousarray(imatrix[256:512]))
        assert np.array_equal(whole[:, 256:512], run), t


def test_small_tensors_are_costed_whole_and_big_ones_on_the_sample(monkeypatch):
    rng = np.random.default_rng(1)
    w = (rng.standard_normal((128, 1024)) * 0.02 * rng.lognormal(0, 0.3, (128, 1))).astype(np.float32)
    fisher = rng.lognormal(0, 0.5, w.shape).astype(np.float32)
    imatrix = rng.lognormal(0, 0.5, 1024).astype(np.float32)
    types = ("Q3_K", "Q4_K", "Q6_K")
    assert mix.SAMPLE_ELEMENTS >= w.size
    assert mix.sampled_runs(*w.shape, 0) is None            # 128 K weights: within the default budget
    whole = mix.tensor_costs(w, fisher, imatrix, types, seed=3)
    monkeypatch.setattr(mix, "SAMPLE_ELEMENTS", 1 << 15)
    runs = mix.sampled_runs(128, 1024, 3)          # [32 rows drawn, 1024 columns]: one row per run of 256
    assert runs.shape == (32, 1024)
    for j in range(4):
        run = runs[:, 256 * j:256 * (j + 1)]
        assert (run == run[:, :1]).all() and len(set(run[:, 0])) == 32
    assert not (runs[:, 0] == runs[:, 256]).all()      # each run its own rows
    est = mix.tensor_costs(w, fisher, imatrix, types, seed=3)
    assert est == mix.tensor_costs(w, fisher, imatrix, types, seed=3)      # fixed by the seed
    for t in types:
        assert est[t] == pytest.approx(whole[t], rel=0.1)
    # the types' order, what the allocation reads, is kept
    assert sorted(types, key=est.get) == sorted(types, key=whole.get)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_the_sampled_rows_are_read_alone_and_are_the_tensors(tmp_path, dtype):
    """The cost table reads only the rows it samples (runs of consecutive rows, one read each):
    the same values as the whole tensor's rows; a row outside the tensor is refused."""
    import torch
    from safetensors.torch import save_file

    from edgellm.exporters.io.safetensors_reader import SafetensorsFile

    w = torch.randn(300, 64).to(getattr(torch, dtype))
    save_file({"w": w, "b": torch.zeros(3)}, str(tmp_path / "m.safetensors"))
    f = SafetensorsFile(tmp_path / "m.safetensors")
    rows = np.array([0, 1, 2, 7, 100, 101, 299])
    assert np.array_equal(f.read_picked_rows("w", rows), f.read("w")[rows])
    assert f.read_picked_rows("w", np.array([], dtype=np.int64)).shape == (0, 64)
    with pytest.raises(ValueError):
        f.read_picked_rows("w", np.array([5, 300]))
