"""ONNX export end to end, as a user runs it: every supported architecture converts and verifies
against transformers, quantized files are the size the planner predicted, the bundle runs and
profiles through the ONNX Runtime backend, and bad input fails cleanly."""

import json

import numpy as np
import pytest

from edgellm import models, devices
from edgellm.formats.choice import BuildChoice
from edgellm.plan.estimate import estimate


def export(run_cli, model, out, *flags):
    r = run_cli("export", str(model), "--device", "rpi5", "--format", "onnx", "-o", str(out), *flags)
    assert r.returncode == 0, r.stderr
    return json.loads((out / "manifest.json").read_text())


@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3", "mistral", "phi3", "gemma", "gemma2", "gemma3_text",
                                  "smollm3", "granite", "gpt2"])
def test_every_supported_architecture_exports_fp32_and_verifies(cli, tiny, tmp_path, arch):
    folder = tiny(arch, tied=arch not in ("mistral", "phi3"))
    m = export(cli, folder, tmp_path / "b", "--quant", "fp32")
    v = m["verification"]
    assert v["runtime"] == "onnxruntime" and v["tokenizer"].startswith("identical")
    assert v["logits_max_rel_diff"] < 1e-3                  # float32 vs float32: summation order only
    assert v["greedy_tokens_checked"] == 128 and v["greedy_ties_within_float_tolerance"] <= 2
    assert v["held_out"]["mean_kld"] < 1e-5 and v["held_out"]["top1_agreement"] > 0.99
    assert {"model.onnx", "model.onnx.data", "tokenizer.json"} <= set(m["files"])
    assert m["operators"]["GroupQueryAttention"] == models.load_config(str(folder)).n_layers


def test_gemma3_global_and_windowed_layers_use_their_own_rotary_tables(cli, run_cli, tiny, tmp_path):
    """Six layers: five windowed (local rope base), the sixth global (rope_theta)."""
    folder = tiny("gemma3_text", num_hidden_layers=6, sliding_window=64)
    m = export(cli, folder, tmp_path / "b", "--quant", "fp32")
    assert m["verification"]["logits_max_rel_diff"] < 1e-3 and m["verification"]["held_out"]["mean_kld"] < 1e-5
    import onnx
    graph = onnx.load(str(tmp_path / "b" / "model.onnx"), load_external_data=False).graph
    windows = [next(a.i for a in n.attribute if a.name == "local_window_size") for n in graph.node
               if n.op_type == "GroupQueryAttention"]
    caches = [n.input[7] for n in graph.node if n.op_type == "GroupQueryAttention"]
    assert windows == [64] * 5 + [-1] and caches == ["cos_cache_local"] * 5 + ["cos_cache"]


@pytest.mark.parametrize("quant,flags", [("fp16", ()), ("int8", ()), ("int4", ()), ("int4", ("--block-size", "64"))])
@pytest.mark.parametrize("tied", [True, False])
def test_quantized_files_are_the_predicted_size_and_report_quality(cli, run_cli, tiny, tmp_path, quant, flags, tied):
    folder = tiny("llama", tied=tied)
    m = export(cli, folder, tmp_path / "b", "--quant", quant, *flags)
    real = m["files"]["model.onnx"]["bytes"] + m["files"]["model.onnx.data"]["bytes"]
    assert real == pytest.approx(m["prediction"]["file_bytes"], rel=0.03)
    h = m["verification"]["held_out"]
    assert 0 <= h["mean_kld"] < 0.5 and h["top1_agreement"] > 0.2     # random weights: flat distributions
    if quant in ("int4", "int8"):
        kernel = "MatMulNBits"
        assert m["operators"][kernel] >= 4 * 2 and m["operators"]["GatherBlockQuantized"] == 1
        assert m["choice"]["block_size"] == (None if quant == "int8" else 64 if flags else 32)  # 64: not in the plan's table
    if quant == "int8":                       # rpi5: Arm with dotprod, full 8-bit weights; no blocks
        assert m["choice"]["int8_levels"] == 127 and "/" not in BuildChoice.from_dict(m["choice"]).label


def test_int4_loses_more_than_int8_which_loses_more_than_fp16(cli, run_cli, tiny, tmp_path):
    folder = tiny("llama")
    kld = {q: export(cli, folder, tmp_path / q, "--quant", q)["verification"]["held_out"]["mean_kld"]
           for q in ("fp16", "int8", "int4")}
    assert kld["fp16"] < kld["int8"] < kld["int4"]


def test_run_and_profile_an_onnx_bundle(cli, run_cli, tiny, tmp_path):
    folder = tiny("qwen2")
    export(cli, folder, tmp_path / "b", "--quant", "int4", "--no-verify")
    r = run_cli("run", str(tmp_path / "b"), "-p", "def main(", "--max-tokens", "8", "--raw")
    assert r.returncode == 0, r.stderr
    r = run_cli("profile", str(tmp_path / "b"), "--prompt-tokens", "32", "--gen-tokens", "8", "--repeats", "2", "--json")
    assert r.returncode == 0, r.stderr
    prof = json.loads(r.stdout)[0]["edgellm"]["measured"]
    assert prof["prefill_tps"] > 0 and prof["decode_tps"] > 0 and prof["peak_rss_bytes"] > 1 << 20


def test_generation_with_the_cache_matches_scoring_the_whole_sequence(cli, tiny, tmp_path, run_cli):
    """The runtime's KV-cache loop gives the logits a single full pass gives."""
    from edgellm.runtime.onnxrt import OnnxModel

    export(cli, tiny("llama"), tmp_path / "b", "--quant", "fp32", "--no-verify")
    model = OnnxModel(tmp_path / "b" / "model.onnx", threads=1)
    ids = model.tokenize("import os\nprint(os.getcwd())")
    full = model.logits(ids)
    logits, cache = model.step(ids[:5], model.empty_cache(), keep=5)
    for t in range(5, len(ids)):
        logits, cache = model.step([ids[t]], cache)
        assert np.abs(logits[-1] - full[t]).max() < 1e-3


def test_mismatched_kv_cache_is_refused(cli, tiny, tmp_path, run_cli):
    import onnxruntime as ort

    from edgellm.errors import BadInput
    from edgellm.runtime.onnxrt import OnnxModel

    export(cli, tiny("llama"), tmp_path / "b", "--quant", "fp32", "--no-verify")
    model = OnnxModel(tmp_path / "b" / "model.onnx", threads=1)
    _, cache = model.step([1, 2, 3], model.empty_cache())
    bad = list(cache)
    bad[0] = ort.OrtValue.ortvalue_from_numpy(np.zeros((1, model.kv_heads + 1, 3, model.head_dim), np.float32))
    with pytest.raises(BadInput, match="KV cache tensor of shape"):
        model.step([4], bad)
    with pytest.raises(BadInput, match="KV cache has"):
        model.step([4], cache[:-1])


def _initializer_bytes(path) -> int:
    import onnx

    m = onnx.load(str(path), load_external_data=False)
    size = {onnx.TensorProto.FLOAT: 4, onnx.TensorProto.FLOAT16: 2, onnx.TensorProto.UINT8: 1, onnx.TensorProto.INT8: 1,
            onnx.TensorProto.INT64: 8}
    return sum(int(np.prod(t.dims)) * size[t.data_type] for t in m.graph.initializer)


def test_planner_onnx_predictions_match_real_files_per_type(cli, tiny, tmp_path, run_cli):
    """Weights the planner predicts vs initializers in the exported graph, for every ONNX build it
    offers; and the predicted file size vs the files on disk."""
    from edgellm.formats import onnx_layout

    folder = tiny("qwen2")
    model = models.load_config(str(folder))
    for quant, block in (("fp32", None), ("fp16", None), ("int8", None), ("int4", 32), ("int4", 128)):
        flags = ("--quant", quant) + (("--block-size", str(block)) if block else ())
        m = export(cli, folder, tmp_path / f"{quant}{block}", *flags, "--no-verify")
        real = _initializer_bytes(tmp_path / f"{quant}{block}" / "model.onnx")
        predicted = onnx_layout.weight_bytes(model, quant, block)
        assert abs(real - predicted) < 1024, quant        # small shape constants aside: exact
        on_disk = m["files"]["model.onnx"]["bytes"] + m["files"]["model.onnx.data"]["bytes"]
        e = estimate(model, devices.find("rpi5"), BuildChoice("onnx", quant, "f32", block), 512)
        assert on_disk == pytest.approx(e.file_bytes, rel=0.03), quant


def test_a_config_onnx_cannot_build_is_refused_before_any_work(run_cli, tiny, tmp_path):
    rope = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 256}
    r = run_cli("export", str(tiny("llama", rope_scaling=rope)), "--device", "rpi5", "--format", "onnx",
                "--quant", "int4", "-o", str(tmp_path / "b"))
    assert r.returncode == 2 and r.stderr.count("\n") == 1
    assert "rope scaling 'yarn' is not supported by ONNX export" in r.stderr
    assert not (tmp_path / "b").exists()


def test_wrong_quant_for_the_format_is_one_clear_line(run_cli, tiny, tmp_path):
    r = run_cli("export", str(tiny("llama")), "--device", "rpi5", "--format", "onnx", "--quant", "Q4_K_M")
    assert r.returncode == 2 and "not a onnx type" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = run_cli("export", str(tiny("llama")), "--device", "rpi5", "--quant", "Q4_K_M", "--block-size", "32")
    assert r.returncode == 2 and "--block-size applies to ONNX" in r.stderr


@pytest.mark.parametrize("victim", ["model.onnx", "model.onnx.data"])
def test_corrupted_onnx_files_are_refused_by_the_runtime(cli, run_cli, tiny, tmp_path, victim):
    b = tmp_path / "b"
    export(cli, tiny("llama"), b, "--quant", "int4", "--no-verify")
    path = b / victim
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    r = run_cli("run", str(b), "-p", "x", "--max-tokens", "2")
    assert r.returncode == 2 and victim in r.stderr and "checksum" in r.stderr


def test_a_truncated_onnx_model_fails_to_load_with_one_line(tmp_path):
    from edgellm.errors import BadInput
    from edgellm.runtime.onnxrt import OnnxModel

    (tmp_path / "model.onnx").write_bytes(b"\x08\x07\x12\x03abc" + b"\x00" * 10)
    with pytest.raises(BadInput, match="could not load"):
        OnnxModel(tmp_path / "model.onnx")


@pytest.mark.parametrize("failure", [KeyboardInterrupt(), OSError(28, "No space left on device")])
def test_interrupted_onnx_export_leaves_nothing(tiny, tmp_path, monkeypatch, failure):
    from edgellm.errors import EdgeLLMError
    from edgellm.exporters.onnx import graph as onnx_graph
    from edgellm.exporters.gguf.export import ExportRequest
    from edgellm.exporters.onnx.export import export_onnx

    real, calls = onnx_graph.quantize_nbits, []

    def boom(*a, **k):
        calls.append(1)
        if len(calls) > 3:
            raise failure
        return real(*a, **k)
    monkeypatch.setattr(onnx_graph, "quantize_nbits", boom)
    folder = tiny("llama")
    req = ExportRequest(model_dir=folder, model=models.load_config(str(folder)),
                        choice=BuildChoice("onnx", "int4", "f32", 32), out=tmp_path / "out", device="rpi5",
                        verify=False)
    with pytest.raises((KeyboardInterrupt, EdgeLLMError)):
        export_onnx(req)
    assert list(tmp_path.iterdir()) == []


def test_int8_weights_are_7_bit_for_x86_without_vnni():
    """ONNX Runtime's uint8 x int8 kernel on such CPUs can overflow with full-range weights."""
    from dataclasses import replace

    from edgellm.formats import int8_levels

    laptop = devices.find("laptop-x86-16gb")                 # Zen 4: AVX-512 VNNI
    old = replace(laptop, cpu=replace(laptop.cpu, isa=("sse4_2", "avx", "avx2", "fma", "f16c")))
    assert int8_levels(laptop) == 127 and int8_levels(devices.find("rpi5")) == 127
    assert int8_levels(old) == 63
