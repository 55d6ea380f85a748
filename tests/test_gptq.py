"""GPTQ's block update from one Cholesky factor of H: the same carry matrices as inverting H and
factoring the inverse (the textbook route), at half the work and a third of the memory."""

import numpy as np

from edgellm.exporters.gguf.gptq import DAMP, Compensator


def _textbook(H: np.ndarray, a: int, b: int) -> np.ndarray:
    H = H.astype(np.float64).copy()
    dead = np.diag(H) == 0
    H[dead, dead] = 1
    H[np.diag_indices_from(H)] += DAMP * np.mean(np.diag(H))
    U = np.linalg.cholesky(np.linalg.inv(H)).T                   # upper, H⁻¹ = UᵀU
    return np.linalg.solve(U[a:b, a:b], U[a:b, b:])


def test_the_carry_is_the_textbook_one():
    rng = np.random.default_rng(0)
    n = 512
    x = rng.standard_normal((4 * n, n)).astype(np.float32) * rng.uniform(0.1, 3, n).astype(np.float32)
    H = x.T @ x / len(x)
    H[7, :] = H[:, 7] = 0                                          # a dead input column
    comp = Compensator(H)
    for a, b in ((0, 256), (256, 384), (128, 160)):
        want = _textbook(H, a, b)
        got = comp.carry(a, b).numpy()
        assert got.shape == want.shape
        assert np.abs(got - want).max() <= 2e-3 * np.abs(want).max(), (a, b)
    assert comp.diag[7] == 1 and comp.R.shape == (n, n)
    assert np.allclose(np.triu(comp.R.numpy()), comp.R.numpy())   # upper triangular: H = R Rᵀ


def test_a_layers_factors_are_dropped_before_the_next_layers_hessians_are_made():
    """The writer goes layer by layer; the factors of layer i must be gone when layer i + 1's XᵀX
    are computed (for an 8B model the widest factor is 2 GB)."""
    from edgellm.exporters.gguf.gptq import Compensators

    rng = np.random.default_rng(1)
    x = rng.standard_normal((256, 64)).astype(np.float32)
    asked = []

    class Lazy(dict):
        def group(self, name):
            return int(name.split(".")[1])

        def get(self, name, default=None):
            asked.append((name, len(comps._made)))       # how many factors are alive when it is made
            return dict.get(self, name, default)

    H = x.T @ x / 256
    hs = Lazy({f"blk.{i}.{t}.weight": H.copy() for i in range(2) for t in ("attn_q", "ffn_down")})
    comps = Compensators(hs)
    assert comps.get("blk.0.attn_q.weight", "Q8_0", 64) is None and not asked     # 8 bits: rounded as is
    for name in hs:
        assert comps.get(name, "Q4_0", 64) is not None
    assert [n for n, alive in asked if alive] == ["blk.0.ffn_down.weight", "blk.1.ffn_down.weight"]
    assert dict(asked)["blk.1.attn_q.weight"] == 0


def test_rounding_several_chunks_at_once_writes_the_same_file(cli, tiny, tmp_path, monkeypatch):
    """On a GPU the writer rounds several row chunks at once (gptq.GPU_WORKERS); the file is the
    one rounded a chunk at a time, byte for byte, and the phases are still recorded."""
    import json

    from edgellm.exporters.gguf import gptq

    folder = tiny("llama")
    outs = {}
    for workers in (1, 3):
        monkeypatch.setattr(gptq, "workers_for", lambda device, n=workers: n)
        monkeypatch.setattr("edgellm.exporters.gguf.write.GPTQ_CHUNK_ELEMENTS", 64 * 256)     # several chunks a tensor
        out = tmp_path / f"w{workers}"
        r = cli("export", str(folder), "--device", "rpi5", "--quant", "Q4_K_M", "--calibrate", "--no-verify",
                "-o", str(out))
        assert r.returncode == 0, r.stderr
        m = json.loads((out / "manifest.json").read_text())
        outs[workers] = (out / m["artifact"]).read_bytes()
        assert m["calibration"]["seconds"]["GPTQ"] > 0 and m["calibration"]["seconds"]["ggml quantize"] > 0
    assert outs[1] == outs[3]
