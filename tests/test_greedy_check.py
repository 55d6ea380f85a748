"""Export verification's greedy check: the continuation it is checked along comes from the runtime
(llama.cpp, ONNX Runtime), which makes it far faster than transformers' generate; the check must
not depend on which model made the continuation."""

import numpy as np
import pytest

from edgellm.exporters.verify.verify import PROMPTS, _check_greedy, _hf_greedy


def _rows(choices, margin=2.0, vocab=6):
    """Logits with each row's argmax at ``choices[i]``, ``margin`` above the rest."""
    out = np.zeros((len(choices), vocab), np.float32)
    out[np.arange(len(choices)), choices] = margin
    return out


def test_agreement_and_ties_whichever_model_made_the_path():
    """Both models' choices along the path are compared, not the path's own tokens.  (A flipped
    choice is always within twice that position's largest difference, so it counts as a tie: a
    wrong conversion fails on the logits' tolerance, checked before; test_export_bad_input.)"""
    seq = [1, 2, 3, 4, 5]                   # prompt [1, 2], continuation [3, 4, 5]
    ref = _rows([0, 3, 4, 5, 0])
    assert _check_greedy(ref, ref.copy(), seq, 2, "p", "f") == 0
    assert _check_greedy(ref, ref.copy(), [1, 2, 0, 0, 0], 2, "p", "f") == 0
    near = ref.copy()
    near[2, 1] = 1.99                       # the original's own margin there is 0.01
    flipped = near.copy()
    flipped[2, 1] = 2.01
    assert _check_greedy(near, flipped, seq, 2, "p", "f") == 1
    assert _check_greedy(near, flipped, [1, 2, 3, 1, 5], 2, "p", "f") == 1


@pytest.fixture(scope="module")
def reference():
    from edgellm.exporters.reference_model import reference_model
    return reference_model("small")


@pytest.mark.parametrize("fmt,quant", [("gguf", "F16"), ("onnx", "fp32")])
def test_the_runtimes_greedy_continuation_is_the_originals(cli, reference, tmp_path, fmt, quant):
    """On a trained model (no near ties), the runtime's greedy continuation of every verification
    prompt is transformers' own, token for token."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from edgellm.runtime.backend import load_backend

    out = tmp_path / "b"
    r = cli("export", str(reference), "--device", "laptop-x86-16gb", "--format", fmt, "--quant", quant,
            "--no-verify", "-o", str(out))
    assert r.returncode == 0, r.stderr
    artifact = next(p for p in out.iterdir() if p.suffix in (".gguf", ".onnx"))
    spec = "edgellm.runtime.llamacpp:LlamaCppModel" if fmt == "gguf" else "edgellm.runtime.onnxrt:OnnxModel"
    cand = load_backend(spec, artifact, 512, 2, scoring=True)
    tok = AutoTokenizer.from_pretrained(reference)
    hf = AutoModelForCausalLM.from_pretrained(reference, dtype=torch.float32)
    for p in PROMPTS:
        ids = tok.encode(p, add_special_tokens=False)
        assert cand.greedy_ids(ids, 32) == _hf_greedy(hf, ids, 32), p
