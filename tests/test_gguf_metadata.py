"""GGUF files carry full general.* metadata (from the model card's YAML front matter) and the chat
template, as llama.cpp apps list and chat with them."""

import shutil

from edgellm.runtime.gguf_check import read_header

CARD = """---
license: apache-2.0
base_model: Qwen/Qwen2.5-0.5B-Instruct
tags:
- chat
- edge
language:
- en
- fr
---
# My tiny model
"""


def test_general_metadata_and_chat_template_reach_llama_cpp(run_cli, tiny, tmp_path):
    from llama_cpp import Llama

    m = tmp_path / "Tiny-Chat-1M-Instruct"
    shutil.copytree(tiny("llama"), m)
    (m / "README.md").write_text(CARD)
    out = tmp_path / "b"
    r = run_cli("export", str(m), "--device", "rpi5", "--quant", "Q8_0", "--no-verify", "-o", str(out))
    assert r.returncode == 0, r.stderr
    path = next(out.glob("*.gguf"))
    meta = Llama(str(path), vocab_only=True, verbose=False).metadata
    assert meta["general.name"] == "Tiny-Chat-1M-Instruct"
    assert meta["general.license"] == "apache-2.0"
    assert meta["general.base_model.count"] == "1"
    assert meta["general.base_model.0.organization"] == "Qwen"
    assert meta["general.quantized_by"].startswith("edgellm ")
    assert meta["general.size_label"]
    assert meta["general.basename"] == "Tiny" and "Instruct" in meta["general.finetune"]
    assert meta["tokenizer.chat_template"].startswith("{% for m in messages %}")
    h = read_header(path).metadata                   # arrays llama-cpp-python's dict leaves out
    assert h["general.tags"] == ["chat", "edge"] and h["general.languages"] == ["en", "fr"]


def test_a_hostile_or_absent_card_still_exports(run_cli, tiny, tmp_path):
    for card in ("---\n!!python/object/apply:os.system ['echo pwned']\n---\n", "---\n- a list\n---\n", "no front matter",
                 "---\nlicense: [1, 2]\ntags: 7\n---\n"):
        m = tmp_path / "model"
        shutil.rmtree(m, ignore_errors=True)
        shutil.copytree(tiny("llama"), m)
        (m / "README.md").write_text(card)
        out = tmp_path / "b"
        r = run_cli("export", str(m), "--device", "rpi5", "--quant", "Q8_0", "--no-verify", "-o", str(out), "--force")
        assert r.returncode == 0, (card, r.stderr)
        assert "pwned" not in r.stdout + r.stderr
