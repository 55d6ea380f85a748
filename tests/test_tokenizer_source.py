"""The tokenizer transformers runs is the tokenizer a bundle ships (issue 26, item 2).

A Qwen2 model whose tokenizer.json says GPT-2's plain byte-level split: transformers 5 rebuilds
the tokenizer from its class (Qwen2's split regex), so that is what the model runs and what both
exports must convert and ship.  Before, the ONNX export was refused after the whole conversion
(its runtime tokenized by the file) and the GGUF was written with the file's pre-tokenizer.
"""

from __future__ import annotations

import json
import shutil

import pytest

from edgellm.cli import main


@pytest.fixture(scope="module")
def disagreeing(tiny, tmp_path_factory):
    folder = tmp_path_factory.mktemp("qwen2-disagrees") / "model"
    shutil.copytree(tiny("qwen2"), folder)
    tj = json.loads((folder / "tokenizer.json").read_text())
    tj["pre_tokenizer"] = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    (folder / "tokenizer.json").write_text(json.dumps(tj))
    assert json.loads((folder / "tokenizer_config.json").read_text()).get("tokenizer_class") == "Qwen2Tokenizer"
    return folder


def test_the_effective_tokenizer_is_what_autotokenizer_runs(disagreeing):
    from transformers import AutoTokenizer

    from edgellm.exporters.io.tokenizer_source import effective_tokenizer

    eff = effective_tokenizer(disagreeing)
    assert "pre_tokenizer" in eff.differs
    runs = AutoTokenizer.from_pretrained(str(disagreeing)).backend_tokenizer      # with torch, as verification loads it
    assert json.loads(eff.json_text)["pre_tokenizer"] == json.loads(runs.to_str())["pre_tokenizer"]
    assert effective_tokenizer(disagreeing) == eff                                 # cached: the same answer


def test_gguf_converts_the_pre_tokenizer_transformers_runs(disagreeing):
    from edgellm.exporters.gguf.vocab import read_vocab
    from edgellm.exporters.io.tokenizer_source import effective_tokenizer

    from edgellm import models

    n = models.load_config(str(disagreeing)).vocab
    assert read_vocab(disagreeing, n).pre == "gpt-2"                               # the file's
    assert read_vocab(disagreeing, n, effective_tokenizer(disagreeing).pipeline()).pre == "qwen2"


@pytest.mark.parametrize("fmt, quant", [("gguf", "Q8_0"), ("onnx", "fp32")])
def test_both_exports_verify_and_ship_what_transformers_runs(disagreeing, tmp_path, fmt, quant):
    from transformers import AutoTokenizer

    out = tmp_path / fmt
    assert main(["export", str(disagreeing), "--device", "laptop-x86-16gb", "--format", fmt, "--quant", quant,
                 "-o", str(out)]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["tokenizer"]["rebuilt_from_class"] == ["pre_tokenizer"]
    assert manifest["verification"]["tokenizer"] == "identical ids on all prompts"
    shipped = json.loads((out / "tokenizer.json").read_text())["pre_tokenizer"]
    assert shipped == json.loads(AutoTokenizer.from_pretrained(str(disagreeing)).backend_tokenizer.to_str())["pre_tokenizer"]


def test_long_text_is_tokenized_without_transformers_length_warning(tiny, caplog):
    """Calibration, held-out and training texts are long on purpose and cut into windows afterwards:
    transformers' "sequence length is longer than the specified maximum" is noise a user never sees."""
    from transformers import AutoTokenizer

    from edgellm.exporters.calibrate.common import calibration_windows
    from edgellm.textdata import text_ids

    tok = AutoTokenizer.from_pretrained(tiny("llama"))
    tok.model_max_length = 64
    text = "def f(x):\n    return x + 1\n" * 400
    caplog.clear()
    windows = calibration_windows(tok, text, 32, 8)
    assert len(windows) == 8 and all(len(w) == 32 for w in windows)
    assert not [r for r in caplog.records if "longer than the specified maximum" in r.getMessage()]
    assert text_ids(tok, text) == tok.encode(text, add_special_tokens=False)
    assert [r for r in caplog.records if "longer than the specified maximum" in r.getMessage()]  # the plain one does


@pytest.mark.parametrize("kind", ["bpe", "sentencepiece"])
def test_calibration_windows_are_those_of_the_whole_text(tiny, spm_tokenizer, tmp_path, kind):
    """Calibration tokenizes a prefix of its 1 MB text, not all of it: its windows are exactly the
    whole text's first ones, for a byte-level BPE and for a SentencePiece tokenizer (no
    pre-tokenizer: the whole text one word), and a text that is barely long enough."""
    from transformers import AutoTokenizer

    from edgellm.exporters.calibrate.common import calibration_windows, default_text
    from edgellm.textdata import text_ids

    tok = AutoTokenizer.from_pretrained(tiny("llama")) if kind == "bpe" else spm_tokenizer
    text = default_text()
    whole = text_ids(tok, text)
    for context, n in ((512, 16), (64, 3), (len(whole) // 2, 4)):
        want = [whole[i * context:(i + 1) * context] for i in range(min(len(whole) // context, n))]
        assert calibration_windows(tok, text, context, n) == want, (context, n)
