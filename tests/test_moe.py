"""Mixture-of-experts families (issue 29): qwen3_moe, mixtral and olmoe in GGUF, verified against
transformers, byte-identical to llama.cpp's quantizer, priced by the experts a token uses; qwen3_moe
and mixtral in float ONNX through ONNX Runtime's MoE operator; refused in one line wherever
edgellm does not take them yet."""

from __future__ import annotations

import json

import pytest

from test_export import assert_as_llama_quantize, export

MOE = ["qwen3_moe", "mixtral", "olmoe"]


def moe(tiny, arch):
    return tiny(arch)                  # olmoe's tiny shape is untied (llama.cpp's graph needs an output)


@pytest.mark.parametrize("arch", MOE)
def test_every_moe_family_exports_f16_and_verifies(cli, tiny, tmp_path, arch):
    m = export(cli, moe(tiny, arch), tmp_path / "b", "--quant", "F16")
    v = m["verification"]
    assert v["tokenizer"].startswith("identical") and v["logits_max_rel_diff"] < 0.05
    assert v["held_out"]["mean_kld"] < 1e-3 and v["held_out"]["top1_agreement"] > 0.97
    header = {t.name: t for t in __import__("edgellm.runtime.gguf_check", fromlist=["x"]).read_header(
        tmp_path / "b" / m["artifact"]).tensors}
    assert list(header["blk.1.ffn_down_exps.weight"].shape)[-1] == 8          # experts stacked as ne2
    assert header["blk.0.ffn_gate_inp.weight"].type_name == "F32"             # the router stays float32


@pytest.mark.parametrize("arch,quant", [("qwen3_moe", "Q4_K_M"), ("mixtral", "Q2_K"), ("olmoe", "Q3_K_M")])
def test_moe_tensors_are_byte_identical_to_llama_quantize(cli, tiny, tmp_path, arch, quant):
    """Our stacked, streamed quantization against llama.cpp's (F16 file -> llama-quantize),
    including its 8-expert rules (attn_v and attn_k at Q8_0, attn_output at Q5_K)."""
    folder = moe(tiny, arch)
    mine = assert_as_llama_quantize(cli, folder, tmp_path, quant)
    assert mine["blk.0.attn_v.weight"][0] == "Q8_0" and mine["blk.0.attn_k.weight"][0] == "Q8_0"
    # the plan's weight bytes hold every expert, exactly
    from edgellm import models
    from edgellm.formats import format_for
    from edgellm.formats.choice import BuildChoice

    c = BuildChoice.from_dict({"format": "gguf", "quant": quant, "kv_cache": "f16"})
    assert format_for(c).weights(models.load_config(str(folder)), c)[0] == sum(len(t[2]) for t in mine.values())


def test_the_plan_prices_decode_by_the_experts_a_token_uses():
    """Qwen3-30B-A3B: memory holds all 128 experts (~30.5 B parameters), a decoded token reads its
    8 (~3.3 B active): the planned decode is that of a ~3 B dense model, not a 30 B one."""
    from edgellm import devices, models
    from edgellm.formats import format_for
    from edgellm.formats.choice import BuildChoice

    m = models.load_config("Qwen/Qwen3-30B-A3B")
    assert m.n_experts == 128 and 30e9 < m.n_params < 31.5e9 and 3.0e9 < m.n_active_params < 3.6e9
    c = BuildChoice.from_dict({"format": "gguf", "quant": "Q4_K_M", "kv_cache": "f16"})
    total, read, _ = format_for(c).weights(m, c)
    assert 0.09 < read / total < 0.13               # ~8/128 of the experts plus the dense part


def test_moe_refusals_are_one_line_before_any_work(cli, tiny, tmp_path):
    q = moe(tiny, "qwen3_moe")
    for flags, want in [(["--format", "onnx", "--quant", "int4"], "ONNX int4 does not support mixture-of-experts"),
                        (["--format", "onnx", "--quant", "int8"], "ONNX int8 does not support mixture-of-experts"),
                        (["--quant", "Q4_K_M", "--calibrate"], "--calibrate does not support mixture-of-experts")]:
        out = tmp_path / "out"
        r = cli("export", str(q), "--device", "laptop-x86-16gb", "-o", str(out), *flags)
        assert r.returncode == 2 and want in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1 and not out.exists()
    r = cli("distill", str(q), "-o", str(tmp_path / "s"), "--size", "0.5", "--steps", "1")
    assert r.returncode == 2 and "distillation does not support 'qwen3_moe'" in r.stderr, r.stderr
    assert not (tmp_path / "s").exists()
    r = cli("export", str(moe(tiny, "olmoe")), "--device", "laptop-x86-16gb", "--format", "onnx", "--quant", "fp32",
            "-o", str(tmp_path / "o"))
    assert r.returncode == 2 and "ONNX export does not support 'olmoe'" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not (tmp_path / "o").exists()
    tied = tiny("olmoe", tied=True)
    r = cli("export", str(tied), "--device", "laptop-x86-16gb", "--quant", "F16", "-o", str(tmp_path / "t"))
    assert r.returncode == 2 and "olmoe graph needs its own output matrix" in r.stderr, r.stderr


@pytest.mark.parametrize("change,want", [
    (lambda cfg, d: cfg.update(norm_topk_prob=False), "always renormalizes"),
    (lambda cfg, d: cfg.update(mlp_only_layers=[1]), "dense MLP layers among the experts"),
    (lambda cfg, d: cfg.update(num_experts_per_tok=9), "exceeds the 8 experts"),
    (lambda cfg, d: cfg.update(num_experts=9), "config.json implies [9, 256]"),
])
def test_moe_configs_llama_cpp_would_run_differently_are_refused(cli, tiny, tmp_path, change, want):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(moe(tiny, "qwen3_moe"), bad)
    cfg = json.loads((bad / "config.json").read_text())
    change(cfg, bad)
    (bad / "config.json").write_text(json.dumps(cfg))
    r = cli("export", str(bad), "--device", "laptop-x86-16gb", "--quant", "F16", "-o", str(tmp_path / "o"))
    assert r.returncode == 2 and want in r.stderr, r.stderr
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("arch,quant", [("qwen3_moe", "fp32"), ("mixtral", "fp32"), ("qwen3_moe", "fp16")])
def test_moe_exports_to_onnx_through_onnx_runtimes_moe_operator_and_verifies(cli, tiny, tmp_path, arch, quant):
    """Each MLP is one node of ONNX Runtime's MoE operator (softmax, top-k, renormalized, silu
    gate times up, interleaved rows); the bundle verifies against transformers like any ONNX export."""
    import onnx

    m = export(cli, moe(tiny, arch), tmp_path / "b", "--format", "onnx", "--quant", quant)
    v = m["verification"]
    assert v["tokenizer"].startswith("identical") and v["held_out"]["top1_agreement"] > 0.99
    assert v["held_out"]["mean_kld"] < (1e-9 if quant == "fp32" else 1e-5), v["held_out"]
    graph = onnx.load(str(tmp_path / "b" / m["artifact"]), load_external_data=False).graph
    nodes = [n for n in graph.node if n.op_type == "MoE"]
    assert len(nodes) == 2 and all(n.domain == "com.microsoft" for n in nodes)
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in nodes[0].attribute}
    assert attrs["k"] == 2 and attrs["normalize_routing_weights"] == 1 and attrs["swiglu_fusion"] == 1
    assert not any(n.op_type == "MatMul" and "mlp" in n.name for n in graph.node)       # no dense MLP left


def test_the_plan_offers_onnx_moe_in_float_only_and_prices_its_active_experts():
    from edgellm import devices, models
    from edgellm.formats import format_for
    from edgellm.formats.choice import BuildChoice
    from edgellm.plan import planner

    m = models.load_config("Qwen/Qwen3-30B-A3B")
    device = devices.find("laptop-x86-16gb")
    plan = planner.plan(m, device, planner.budgets_for(device, None, None, 4096, m), formats=("onnx",))
    assert {str(c.choice.quant) for c in plan.candidates} == {"fp32", "fp16"}
    c = BuildChoice.from_dict({"format": "onnx", "quant": "fp16", "kv_cache": "f32"})
    total, read, _ = format_for(c).weights(m, c)
    assert 0.09 < read / total < 0.13               # ~8/128 of the experts plus the dense part


def test_a_checkpoint_missing_an_expert_is_refused_before_writing(cli, tiny, tmp_path):
    import shutil

    from safetensors.numpy import load_file, save_file

    bad = tmp_path / "bad"
    shutil.copytree(moe(tiny, "qwen3_moe"), bad)
    weights = load_file(bad / "model.safetensors")
    del weights["model.layers.1.mlp.experts.5.up_proj.weight"]
    save_file(weights, bad / "model.safetensors", metadata={"format": "pt"})
    r = cli("export", str(bad), "--device", "laptop-x86-16gb", "--quant", "Q4_K_M", "-o", str(tmp_path / "o"))
    assert r.returncode == 2 and "blk.1.ffn_up_exps.weight needs experts 0-7" in r.stderr and "lacks expert(s) [5]" in r.stderr
    assert not (tmp_path / "o").exists()
    r = cli("export", str(bad), "--device", "laptop-x86-16gb", "--format", "onnx", "--quant", "fp32", "-o", str(tmp_path / "o"))
    assert r.returncode == 2 and "no tensor 'model.layers.1.mlp.experts.5.up_proj.weight'" in r.stderr, r.stderr
    assert not (tmp_path / "o").exists()


def test_the_planned_pi5_decode_of_qwen3_30b_a3b_meets_the_published_figure():
    """ByteShape's Qwen3-30B-A3B at 2.70 bits per weight: 8.03 tok/s with llama.cpp on a Pi 5 16 GB.
    The plan, priced by the experts a token reads, within ±25% (a dense 30 B would plan ~0.7)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).parent.parent / "benchmarks" / "plan_accuracy.py"
    spec = importlib.util.spec_from_file_location("plan_accuracy", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    for prof, name, bpw, tps, _ in bench.PUBLISHED_MOE:
        assert 0.75 <= bench.moe_planned(prof, name, bpw) / tps <= 1.25
