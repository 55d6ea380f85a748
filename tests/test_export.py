"""GGUF export end to end, as a user runs it: every architecture converts and verifies, the
quantized files hold exactly the tensor types the planner predicted, and the bundle runs."""

import json

import pytest

from edgellm import models
from edgellm.formats.ggml_types import TYPES
from edgellm.formats.gguf_recipes import tensor_types
from edgellm.runtime.gguf_check import read_header


def export(run_cli, model, out, *flags):
    r = run_cli("export", str(model), "--device", "rpi5", "-o", str(out), *flags)
    assert r.returncode == 0, r.stderr
    return json.loads((out / "manifest.json").read_text())


@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3", "mistral", "gpt2", "phi3", "gemma", "gemma2",
                                  "gemma3_text", "smollm3", "granite"])
def test_every_architecture_exports_f16_and_verifies(cli, tiny, tmp_path, arch):
    folder = tiny(arch, tied=arch not in ("mistral", "phi3"))
    manifest = export(cli, folder, tmp_path / "b", "--quant", "F16")
    v = manifest["verification"]
    assert v["tokenizer"].startswith("identical")
    # random-weight models have near-flat distributions: a few exact ties within float noise are
    # expected; a wrong conversion fails the export outright
    assert v["greedy_tokens_checked"] == 128 and v["greedy_ties_within_float_tolerance"] <= 6
    assert v["logits_max_rel_diff"] < 0.05
    assert v["held_out"]["mean_kld"] < 1e-3 and v["held_out"]["top1_agreement"] > 0.97
    files = manifest["files"]
    assert manifest["artifact"] in files and "tokenizer.json" in files
    assert all(len(f["sha256"]) == 64 for f in files.values())


@pytest.mark.parametrize("quant,model_file", [("F16", True), ("Q4_K_M", True), ("F16", False), ("Q4_K_M", False)])
def test_sentencepiece_tokenizer_exports_and_verifies(cli, run_cli, spm_tokenizer, tmp_path, quant, model_file):
    """With tokenizer.model beside tokenizer.json (as hub checkpoints ship), and with
    tokenizer.json alone (as transformers 5 saves a SentencePiece tokenizer)."""
    import shutil

    from edgellm.exporters.demo_models import build_model

    folder = build_model("llama", tmp_path / "m", spm_tokenizer)
    assert not (folder / "tokenizer.model").exists()
    if model_file:
        shutil.copyfile(spm_tokenizer.name_or_path + "/spm.model", folder / "tokenizer.model")
    manifest = export(cli, folder, tmp_path / "b", "--quant", quant)
    assert manifest["verification"]["tokenizer"].startswith("identical")
    header = read_header(tmp_path / "b" / manifest["artifact"])
    assert header.metadata["tokenizer.ggml.model"] == "llama"
    # as the saved tokenizer.json says (a Metaspace that prepends to the first piece); identical ids above
    from edgellm.exporters.gguf.vocab import _spm_space_prefix
    tj = json.loads((folder / "tokenizer.json").read_text())
    assert header.metadata["tokenizer.ggml.add_space_prefix"] is _spm_space_prefix(tj) is True
    r = run_cli("run", str(tmp_path / "b"), "--raw", "-p", "def main():", "--max-tokens", "5")
    assert r.returncode == 0 and r.stderr == "", r.stderr    # random weights may pick blank pieces


def test_llama3_rope_scaling_table_verifies(cli, run_cli, tiny, tmp_path):
    rope = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 64}
    manifest = export(cli, tiny("llama", rope_scaling=rope), tmp_path / "b", "--quant", "F16")
    assert manifest["verification"]["held_out"]["mean_kld"] < 1e-3
    header = read_header(tmp_path / "b" / manifest["artifact"])
    assert "rope_freqs.weight" in {t.name for t in header.tensors}


def planned(folder, quant):
    m = models.load_config(str(folder))
    hist, data = {}, 0
    for t, ty in tensor_types(m, quant):
        hist[ty] = hist.get(ty, 0) + 1
        data += TYPES[ty].row_bytes(t.ne0) * t.ne1
    return hist, data


@pytest.mark.parametrize("quant", ["Q4_K_M", "Q8_0", "Q2_K", "IQ4_XS"])
def test_quantized_file_has_the_planned_tensor_types(cli, run_cli, tiny, tmp_path, quant):
    folder = tiny("llama", num_hidden_layers=8)
    manifest = export(cli, folder, tmp_path / "b", "--quant", quant, "--no-verify")
    hist, data = planned(folder, quant)
    assert manifest["tensor_types"] == hist
    header = read_header(tmp_path / "b" / manifest["artifact"])
    assert sum(t.nbytes for t in header.tensors) == data
    assert manifest["verification"] == {"skipped": True}


def test_rows_not_divisible_by_256_fall_back_like_llama_cpp(cli, run_cli, tiny, tmp_path):
    folder = tiny("qwen2", hidden_size=320, intermediate_size=640, num_attention_heads=5, num_key_value_heads=1)
    manifest = export(cli, folder, tmp_path / "b", "--quant", "Q4_K_M")
    hist, _ = planned(folder, "Q4_K_M")
    assert manifest["tensor_types"] == hist and "Q5_0" in hist
    assert manifest["verification"]["held_out"]["top1_agreement"] > 0.5


def test_padded_vocabulary_exports(cli, run_cli, tiny, tmp_path):
    folder = tiny("llama", pad_vocab=7)
    manifest = export(cli, folder, tmp_path / "b", "--quant", "Q8_0")
    header = read_header(tmp_path / "b" / manifest["artifact"])
    tokens = header.metadata["tokenizer.ggml.tokens"]
    assert tokens[-1].startswith("[PAD") and len(tokens) == models.load_config(str(folder)).vocab


def test_auto_takes_the_planners_choice(cli, run_cli, tiny, tmp_path):
    folder = tiny("llama")
    plan = json.loads(run_cli("plan", str(folder), "--device", "rpi5", "--format", "gguf", "--json").stdout)
    manifest = export(cli, folder, tmp_path / "b")
    assert manifest["choice"] == plan["winner"]["choice"]
    assert manifest["prediction"]["decode_tokens_per_s"] == plan["winner"]["decode_tokens_per_s"]


def test_run_and_profile_the_bundle(cli, run_cli, tiny, tmp_path):
    export(cli, tiny("llama"), tmp_path / "b", "--quant", "Q4_K_M", "--no-verify")
    r = run_cli("run", str(tmp_path / "b"), "-p", "def main():", "--max-tokens", "8")
    assert r.returncode == 0 and r.stdout.strip(), r.stderr
    assert r.stderr == ""                                    # llama.cpp's chatter stays hidden
    r = run_cli("profile", str(tmp_path / "b"), "--prompt-tokens", "64", "--gen-tokens", "16",
                "--repeats", "2", "--json")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)[0]["edgellm"]
    m = data["measured"]
    assert m["prefill_tps"] > 0 and m["decode_tps"] > 0 and m["peak_rss_bytes"] > 1 << 20
    assert m["ttft_s"] > 0 and data["predicted"]["decode_tokens_per_s"] > 0
    r = run_cli("profile", str(tmp_path / "b"), "--prompt-tokens", "64", "--gen-tokens", "16", "--repeats", "1")
    assert "predicted" in r.stdout and "decode" in r.stdout


def test_one_flipped_byte_is_refused_naming_the_file(cli, run_cli, tiny, tmp_path):
    manifest = export(cli, tiny("llama"), tmp_path / "b", "--quant", "Q8_0", "--no-verify")
    path = tmp_path / "b" / manifest["artifact"]
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    r = run_cli("run", str(tmp_path / "b"), "-p", "x")
    assert r.returncode == 2 and manifest["artifact"] in r.stderr and "checksum mismatch" in r.stderr


def tensor_bytes(path):
    header = read_header(path)
    blob = path.read_bytes()
    return {t.name: (t.type_name, t.shape, blob[header.data_start + t.offset:header.data_start + t.offset + t.nbytes])
            for t in header.tensors}


def assert_as_llama_quantize(run_cli, folder, tmp_path, quant) -> dict:
    """Export ``folder`` at ``quant`` and check every tensor is byte-identical to llama.cpp's own
    pipeline (our F16 file -> llama-quantize); our tensors (name -> (type, shape, bytes))."""
    import ctypes

    import llama_cpp

    f16 = export(run_cli, folder, tmp_path / "f16", "--quant", "F16", "--no-verify")["artifact"]
    ours = export(run_cli, folder, tmp_path / "q", "--quant", quant, "--no-verify")["artifact"]
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{quant}")
    ref = tmp_path / "ref.gguf"
    assert llama_cpp.llama_model_quantize(str(tmp_path / "f16" / f16).encode(), str(ref).encode(),
                                          ctypes.byref(params)) == 0
    mine, theirs = tensor_bytes(tmp_path / "q" / ours), tensor_bytes(ref)
    assert sorted(mine) == sorted(theirs)
    for name in theirs:
        assert mine[name] == theirs[name], name
    return mine


@pytest.mark.parametrize("quant", ["Q4_K_M", "Q6_K", "Q3_K_M", "IQ4_XS"])
def test_tensors_are_byte_identical_to_llama_quantize(cli, tiny, tmp_path, quant):
    """Our streamed quantization against llama.cpp's own pipeline (F16 file -> llama-quantize)."""
    assert_as_llama_quantize(cli, tiny("llama", num_hidden_layers=8), tmp_path, quant)


def test_exports_are_deterministic(cli, run_cli, tiny, tmp_path):
    """Same model and options: byte-identical bundles (no timestamps anywhere)."""
    folder = tiny("llama")
    a = export(cli, folder, tmp_path / "a", "--quant", "Q4_K_M", "--no-verify")
    b = export(cli, folder, tmp_path / "b", "--quant", "Q4_K_M", "--no-verify")
    assert a == b
    for name in a["files"]:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_a_float_builds_figures_say_they_were_measured_on_the_exact_cache(cli, tiny, tmp_path):
    """A float build's verification checks the conversion with llama.cpp's exact f16 cache; when
    the bundle runs a q8_0 cache, its manifest says so beside the figures (and an f16 build's says
    nothing: it was measured as it runs)."""
    from edgellm.formats.choice import BuildChoice
    from edgellm.exporters.verify.verify import verify_file

    folder = tiny("llama")
    manifest = export(cli, folder, tmp_path / "b", "--quant", "F16", "--no-verify")
    artifact = tmp_path / "b" / manifest["artifact"]
    q8 = verify_file(folder, BuildChoice("gguf", "F16", "q8_0"), artifact, 1)
    assert q8["measured_with"] == "llama.cpp's exact defaults, to check the conversion; the bundle runs kv_cache q8_0"
    assert "measured_with" not in verify_file(folder, BuildChoice("gguf", "F16", "f16"), artifact, 1)
