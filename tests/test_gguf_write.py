"""The fast packing of long metadata arrays writes exactly what gguf's generic path writes."""

import numpy as np
import gguf
import pytest
from gguf.constants import GGUFValueType

from edgellm.exporters.gguf.write import writer_class


@pytest.mark.parametrize("values", [
    [f"tok{i}\u0120é" for i in range(500)],          # strings, with non-ASCII
    list(range(-100, 400)),                          # int32 (token types)
    [i / 7 - 30.5 for i in range(500)],              # float32 (scores)
    [1, 2] * 10,                                     # short: generic path
    [1, 2.5] * 100,                                  # mixed: generic path raises as before
])
def test_fast_array_packing_matches_the_generic_writer(values):
    fast, slow = writer_class()(None, "llama"), gguf.GGUFWriter(None, "llama")
    try:
        expected = slow._pack_val(values, GGUFValueType.ARRAY, add_vtype=True)
    except ValueError:
        with pytest.raises(ValueError):
            fast._pack_val(values, GGUFValueType.ARRAY, add_vtype=True)
        return
    assert fast._pack_val(values, GGUFValueType.ARRAY, add_vtype=True) == expected


@pytest.mark.parametrize("ggml_type", ["F16", "Q4_K", "Q8_0"])
def test_bfloat16_lookup_path_matches_widen_round_quantize(ggml_type):
    """The bf16 shortcut (one table gather) must give the bytes of widen -> float16 -> quantize,
    including values float16 can only hold as subnormals or flushes to zero."""
    import numpy as np

    from edgellm.exporters.gguf.write import _encode_span
    from edgellm.exporters.gguf.ggml_quant import row_bytes

    rng = np.random.default_rng(0)
    values = (rng.standard_normal((8, 256)) * 0.02).astype(np.float32)
    values[0, :64] *= 1e-3                                  # float16 subnormals
    values[1, :8] = [1e-9, -1e-9, 0.0, -0.0, 65280.0, -65280.0, 6e-8, 3e-5]
    raw = (values.view(np.uint32) >> 16).astype(np.uint16)  # bfloat16 bit patterns
    size = 8 * (row_bytes(ggml_type, 256) if ggml_type != "F16" else 512)
    fast, slow = np.empty(size, np.uint8), np.empty(size, np.uint8)
    _encode_span(raw, ggml_type, fast, "BF16")
    _encode_span((raw.astype(np.uint32) << 16).view(np.float32), ggml_type, slow, "F32")
    assert fast.tobytes() == slow.tobytes()


@pytest.mark.parametrize("bad", [65536.0, float("inf"), float("nan")])
def test_bfloat16_outside_float16_range_is_refused(bad):
    import numpy as np

    from edgellm.errors import BadInput
    from edgellm.exporters.gguf.write import _encode_span

    values = np.full((2, 32), 0.5, np.float32)
    values[1, 3] = bad
    raw = (values.view(np.uint32) >> 16).astype(np.uint16)
    with pytest.raises(BadInput, match="float16"):
        _encode_span(raw, "F16", np.empty(128, np.uint8), "BF16")


@pytest.mark.parametrize("ggml_type", ["Q2_K", "Q3_K", "IQ4_XS", "Q4_K", "Q5_K", "Q6_K", "Q8_0", "Q4_0", "Q4_1",
                                       "IQ4_NL", "Q5_0", "Q5_1"])
def test_ggml_dequantizer_gives_the_gguf_packages_values(ggml_type, monkeypatch):
    """Calibration dequantizes with ggml's own to_float (fast, threaded): the same floats as the
    gguf package's reference dequantizer, and that one is used where the traits do not match."""
    from edgellm.exporters.gguf import ggml_quant

    rng = np.random.default_rng(1)
    w = rng.standard_normal((37, 512)).astype(np.float32)
    buf = np.empty(37 * ggml_quant.row_bytes(ggml_type, 512), np.uint8)
    ggml_quant.quantize_into(ggml_type, w, buf, imatrix=rng.random(512).astype(np.float32) + 0.1)
    want = np.asarray(gguf.quants.dequantize(buf.reshape(37, -1), gguf.GGMLQuantizationType[ggml_type]),
                      np.float32).reshape(37, 512)
    assert ggml_quant._to_float(ggml_type) is not None
    for threads in (1, 3):
        assert np.array_equal(ggml_quant.dequantize(ggml_type, buf, 512, threads), want)
    monkeypatch.setattr(ggml_quant, "_to_float", lambda name: None)
    assert np.array_equal(ggml_quant.dequantize(ggml_type, buf, 512), want)
    with pytest.raises(ValueError, match="whole"):
        ggml_quant.dequantize(ggml_type, buf[:-1], 512)


def test_float16_rounding_of_bfloat16_is_numpys_for_every_pattern():
    """bfloat16 rows rounded through float16 (what the quantizer sees), by the widening shift and
    the subnormals' fix-up and by torch for GPTQ's rows: numpy's own float16 round trip, bit for
    bit, for every finite bfloat16 pattern in float16's range (signed zeros and subnormals
    included); past the range, one clear refusal."""
    from edgellm.errors import BadInput
    from edgellm.exporters.gguf.write import _BF16_F16_OVERFLOW, _f16_rounded, _f16_rounded_rows

    every = np.arange(1 << 16, dtype=np.uint16)
    every = every[(every & 0x7FFF) < _BF16_F16_OVERFLOW].reshape(2, -1)
    want = (every.astype(np.uint32) << 16).view(np.float32).astype(np.float16).astype(np.float32)
    for got in (_f16_rounded(every, "BF16"), _f16_rounded_rows(every, "BF16")):
        assert np.array_equal(got.view(np.uint32), want.view(np.uint32))
    for bad in (0x4780, 0x7F80, 0xFFC0):            # rounds to inf in float16; inf; NaN
        with pytest.raises(BadInput, match="float16's range"):
            _f16_rounded(np.array([[0x3F80, bad]], dtype=np.uint16), "BF16")


@pytest.mark.parametrize("quant,threads", [("F16", 1), ("Q4_K_M", 2)])
def test_the_writer_hashes_the_file_it_writes(tmp_path, tiny, quant, threads):
    """write_gguf's digest (the manifest takes it instead of reading the file back) is the
    sha256 of the bytes on disk."""
    import hashlib

    from edgellm import models
    from edgellm.exporters.gguf.vocab import read_vocab
    from edgellm.exporters.gguf.write import write_gguf
    from edgellm.exporters.io.checkpoint import open_checkpoint
    from edgellm.models.families import family_for

    folder = tiny("qwen2")
    m = models.load_config(str(folder))
    path = tmp_path / "m.gguf"
    digest = write_gguf(m, open_checkpoint(folder), family_for(m, "gguf"), read_vocab(folder, m.vocab), folder,
                        path, quant, threads)
    assert digest == hashlib.sha256(path.read_bytes()).hexdigest()
