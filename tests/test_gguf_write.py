"""The fast packing of long metadata arrays writes exactly what gguf's generic path writes."""

import gguf
import pytest
from gguf.constants import GGUFValueType

from edgellm.exporters.gguf_write import writer_class


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
