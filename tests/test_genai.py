"""ONNX bundles load in onnxruntime-genai (what apps ship) as they are, and its greedy search gives
the tokens `edgellm run` gives."""

import json

import pytest

import onnxruntime_genai as og


def genai_greedy(bundle, ids, n):
    model = og.Model(str(bundle))
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(ids) + n, do_sample=False)
    gen = og.Generator(model, params)
    gen.append_tokens(ids)
    out = []
    while not gen.is_done():
        gen.generate_next_token()
        out.append(int(gen.get_next_tokens()[0]))
    return out


@pytest.mark.parametrize("arch,quant", [("llama", "fp32"), ("qwen2", "int4"), ("gemma3_text", "fp16"), ("gpt2", "int8"), ("phi3", "fp32")])
def test_genai_loads_the_bundle_and_generates_what_edgellm_run_does(run_cli, tiny, tmp_path, arch, quant):
    from edgellm.runtime.backend import open_backend

    out = tmp_path / "b"
    r = run_cli("export", str(tiny(arch)), "--device", "laptop-x86-16gb", "--format", "onnx", "--quant", quant,
                "-o", str(out), "--no-verify")
    assert r.returncode == 0, r.stderr
    cfg = json.loads((out / "genai_config.json").read_text())
    assert cfg["model"]["decoder"]["filename"] == "model.onnx"
    assert "genai_config.json" in json.loads((out / "manifest.json").read_text())["files"]
    bundle, backend = open_backend(out)
    ids = backend.tokenize("def main():\n    return", add_bos=False)
    ours = list(backend.generate(list(ids), 16, 0.0, 0))
    bundle.close()
    theirs = genai_greedy(out, ids, 16)
    n = len(ours)                      # edgellm stops at an end-of-generation token; genai too
    assert theirs[:n] == ours
    # and through the CLI, as a user would compare them: the same text
    text = run_cli("run", str(out), "--raw", "-p", "def main():\n    return", "--max-tokens", "16")
    assert text.returncode == 0
