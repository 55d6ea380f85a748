"""Mixture-of-experts families (issue 29): qwen3_moe, mixtral and olmoe in GGUF, verified against
transformers, byte-identical to llama.cpp's quantizer, priced by the experts a token uses; qwen3_moe
and mixtral in ONNX through ONNX Runtime's MoE and QMoE operators; refused in one line wherever
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
    for flags, want in [(["--format", "onnx", "--quant", "int4", "--calibrate"],
                         "--calibrate does not support ONNX builds of mixture-of-experts")]:
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
    (lambda cfg, d: cfg.update(num_experts=9, num_local_experts=9), "config.json implies [9, 256]"),
    # hostile or inconsistent values: one line naming the key, before any size is planned from them
    (lambda cfg, d: cfg.update(num_experts=9), "num_experts=9 and num_local_experts=8 disagree"),
    (lambda cfg, d: cfg.update(num_local_experts="8"), "'num_local_experts' is '8'; it must be a whole number"),
    (lambda cfg, d: cfg.update(num_local_experts=10**9), "'num_local_experts' is 1000000000; edgellm takes 1 to 4,096"),
    (lambda cfg, d: cfg.update(norm_topk_prob="yes"), "'norm_topk_prob' is 'yes'; it must be true or false"),
    (lambda cfg, d: cfg.update(num_local_experts=4096, moe_intermediate_size=1 << 20),
     "parameters, but the checkpoint holds"),
    (lambda cfg, d: cfg.update(quantization_config={"quant_method": "gptq", "bits": 4}),
     "its weights are already quantized (gptq)"),
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


@pytest.mark.parametrize("arch,quant,kld,top1", [("qwen3_moe", "fp32", 1e-9, 0.99), ("mixtral", "fp32", 1e-9, 0.99),
                                                  ("qwen3_moe", "fp16", 1e-5, 0.99), ("qwen3_moe", "int8", 2e-3, 0.9),
                                                  ("mixtral", "int4", 0.1, 0.5)])
def test_moe_exports_to_onnx_through_onnx_runtimes_moe_operator_and_verifies(cli, tiny, tmp_path, arch, quant, kld, top1):
    """Each MLP is one node of ONNX Runtime's MoE operator (QMoE for int8 and int4: softmax, top-k,
    renormalized, silu gate times up, interleaved rows); the bundle verifies against transformers
    like any ONNX export (a random tiny model's near-uniform distributions make top-1 fragile)."""
    import onnx

    m = export(cli, moe(tiny, arch), tmp_path / "b", "--format", "onnx", "--quant", quant)
    v = m["verification"]
    assert v["tokenizer"].startswith("identical") and v["held_out"]["top1_agreement"] > top1
    assert v["held_out"]["mean_kld"] < kld, v["held_out"]
    graph = onnx.load(str(tmp_path / "b" / m["artifact"]), load_external_data=False).graph
    op = "QMoE" if quant in ("int8", "int4") else "MoE"
    nodes = [n for n in graph.node if n.op_type == op]
    assert len(nodes) == 2 and all(n.domain == "com.microsoft" for n in nodes)
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in nodes[0].attribute}
    assert attrs["k"] == 2 and attrs["normalize_routing_weights"] == 1 and attrs["swiglu_fusion"] == 1
    assert attrs.get("expert_weight_bits") == {"int8": 8, "int4": 4}.get(quant)
    assert not any(n.op_type == "MatMul" and "mlp" in n.name for n in graph.node)       # no dense MLP left
    from edgellm import models
    from edgellm.formats import format_for
    from edgellm.formats.choice import BuildChoice

    c = BuildChoice.from_dict({"format": "onnx", "quant": quant, "kv_cache": "f32",
                               **({"block_size": 32} if quant == "int4" else {})})
    written = sum(f.stat().st_size for f in (tmp_path / "b").iterdir() if f.name.startswith(m["artifact"].split(".")[0]))
    predicted = format_for(c).file_bytes(models.load_config(str(moe(tiny, arch))), c)
    assert abs(predicted / written - 1) < 0.05, (predicted, written)       # the plan's file size holds every expert


@pytest.mark.parametrize("bits,block", [(8, None), (4, 32), (4, 16)])
def test_quantized_experts_are_laid_out_as_onnx_runtimes_qmoe_reads_them(bits, block):
    """One QMoE node on weights from ``quantize_experts`` against numpy on their dequantized values:
    equal to float rounding (a wrong nibble order or scale layout is off by the weights' size)."""
    import numpy as np
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    from edgellm.exporters.onnx.weights import quantize_experts

    rng = np.random.default_rng(0)
    e, hidden, ffn, k = 4, 64, 32, 2
    fc1, fc2 = rng.standard_normal((e, 2 * ffn, hidden), np.float32), rng.standard_normal((e, hidden, ffn), np.float32)
    x, r = rng.standard_normal((5, hidden), np.float32), rng.standard_normal((5, e), np.float32)

    def dequantized(w):
        q, s = quantize_experts(w, bits, block)
        if bits == 4:
            q = np.stack([q & 15, q >> 4], -1).reshape(w.shape)
        q = q.astype(np.float32) - (8 if bits == 4 else 128)
        return (q.reshape(*w.shape[:2], -1, block) * s[..., None]).reshape(w.shape) if block else q * s[..., None]
    d1, d2 = dequantized(fc1), dequantized(fc2)
    assert np.abs(d1 - fc1).max() < (0.5 if bits == 4 else 0.02) * np.abs(fc1).max()
    p = np.exp(r - r.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    want = np.zeros_like(x)
    for t in range(len(x)):
        top = np.argsort(-p[t])[:k]
        for ex, wt in zip(top, p[t, top] / p[t, top].sum()):
            a = d1[ex] @ x[t]
            want[t] += wt * (d2[ex] @ (a[0::2] / (1 + np.exp(-a[0::2])) * a[1::2]))
    inits = []
    for name, w in (("fc1", fc1), ("fc2", fc2)):
        q, s = quantize_experts(w, bits, block)
        inits += [onnx.numpy_helper.from_array(q, name), onnx.numpy_helper.from_array(s, name + ".s")]
    node = helper.make_node("QMoE", ["x", "r", "fc1", "fc1.s", "", "fc2", "fc2.s", ""], ["y"], domain="com.microsoft",
                            k=k, activation_type="swiglu", swiglu_fusion=1, normalize_routing_weights=1,
                            expert_weight_bits=bits, **({"block_size": block} if block else {}))
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, hidden]),
                                            helper.make_tensor_value_info("r", TensorProto.FLOAT, [None, e])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, hidden])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    got = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x, "r": r})[0]
    assert np.abs(got - want).max() < 1e-4 * np.abs(want).max()


def test_onnx_int4_blocks_must_divide_the_experts_rows():
    from edgellm.formats import format_for
    from edgellm.formats.choice import BuildChoice
    from edgellm.models.families import from_config_dict

    cfg = {"model_type": "qwen3_moe", "architectures": ["Qwen3MoeForCausalLM"], "hidden_size": 256,
           "intermediate_size": 512, "moe_intermediate_size": 96, "num_experts": 8, "num_experts_per_tok": 2,
           "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 64,
           "vocab_size": 1024, "tie_word_embeddings": False, "max_position_embeddings": 512}
    m = from_config_dict(cfg, "m")
    for block, refused in ((32, False), (64, True)):
        c = BuildChoice.from_dict({"format": "onnx", "quant": "int4", "kv_cache": "f32", "block_size": block})
        problem = format_for(c).choice_problem(m, c)
        assert (problem is not None) == refused and (not refused or "do not divide the experts' rows" in problem)


def test_the_plan_offers_onnx_moe_and_prices_its_active_experts():
    from edgellm import devices, models
    from edgellm.formats import format_for
    from edgellm.formats.choice import BuildChoice
    from edgellm.plan import planner

    m = models.load_config("Qwen/Qwen3-30B-A3B")
    device = devices.find("laptop-x86-16gb")
    plan = planner.plan(m, device, planner.budgets_for(device, None, None, 4096, m), formats=("onnx",))
    assert {str(c.choice.quant) for c in plan.candidates} == {"fp32", "fp16", "int8", "int4"}
    for quant, per_weight in (("fp16", 4.0), ("int8", 1.0), ("int4", 0.625)):   # fp16 widened at load; int4/32: a float scale a block
        c = BuildChoice.from_dict({"format": "onnx", "quant": quant, "kv_cache": "f32",
                                   **({"block_size": 32} if quant == "int4" else {})})
        total, read, _ = format_for(c).weights(m, c)
        assert 0.09 < read / total < 0.13           # ~8/128 of the experts plus the dense part
        assert per_weight <= total / m.n_params < 1.2 * per_weight, quant      # every expert is held


def test_a_checkpoint_missing_an_expert_is_refused_before_writing(cli, tiny, tmp_path):
    import shutil

    from safetensors.numpy import load_file, save_file

    bad = tmp_path / "bad"
    shutil.copytree(moe(tiny, "qwen3_moe"), bad)
    weights = load_file(bad / "model.safetensors")
    del weights["model.layers.1.mlp.experts.5.up_proj.weight"]
    save_file(weights, bad / "model.safetensors", metadata={"format": "pt"})
    for calibrate in ([], ["--calibrate"]):          # calibrated: refused before the calibration's work
        r = cli("export", str(bad), "--device", "laptop-x86-16gb", "--quant", "Q4_K_M", *calibrate, "-o",
                str(tmp_path / "o"))
        assert r.returncode == 2 and "blk.1.ffn_up_exps.weight needs experts 0-7" in r.stderr, r.stderr
        assert "lacks expert(s) [5]" in r.stderr and "calibrating a layer" not in r.stderr
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


@pytest.mark.parametrize("arch", MOE)
def test_calibrated_moe_builds_weigh_each_expert_by_the_tokens_routed_to_it(cli, tiny, tmp_path, arch):
    """--calibrate on a mixture: each expert's importance from its own tokens, recorded per layer;
    the experts keep the recipe's types; the build is closer to the model than the plain one."""
    cal = export(cli, moe(tiny, arch), tmp_path / "c", "--quant", "Q3_K_M", "--calibrate")
    plain = export(cli, moe(tiny, arch), tmp_path / "u", "--quant", "Q3_K_M")
    experts = cal["calibration"]["experts"]
    assert (experts["layers"], experts["experts_per_layer"], experts["unreached"]) == (2, 8, 0)
    assert experts["min_tokens"] > 0 and "routed" in experts["per_expert"]
    types = {t: n for t, n in plain["tensor_types"].items()}
    assert cal["verification"]["held_out"]["mean_kld"] < 0.8 * plain["verification"]["held_out"]["mean_kld"]
    assert sum(cal["tensor_types"].values()) == sum(types.values())


def test_an_expert_no_calibration_token_reaches_gets_no_garbage_statistics(cli, tiny, tmp_path, monkeypatch):
    """Expert 3 never routed to while calibrating: its down projection is rounded without weights,
    byte for byte as in the uncalibrated file; its gate/up are weighted by every token's statistics
    (so differ from the plain rounding), and the record says how many experts went unreached."""
    import gguf

    from edgellm.exporters.calibrate import common

    record = common.ExpertStats.record
    monkeypatch.setattr(common.ExpertStats, "record",
                        lambda self, mod, hidden, chosen: record(self, mod, hidden, chosen.masked_fill(chosen == 3, 0)))
    folder = moe(tiny, "qwen3_moe")
    cal = export(cli, folder, tmp_path / "c", "--quant", "Q4_K_M", "--calibrate", "--no-verify")
    plain = export(cli, folder, tmp_path / "u", "--quant", "Q4_K_M", "--no-verify")
    assert cal["calibration"]["experts"]["unreached"] == 2          # expert 3 of each of the 2 layers

    def tensors(d, m):
        return {t.name: (t.tensor_type.name, t.data.reshape(8, -1)) for t in gguf.GGUFReader(d / m["artifact"]).tensors
                if t.name.startswith("blk.0.ffn_") and t.name.endswith("_exps.weight")}
    c, p = tensors(tmp_path / "c", cal), tensors(tmp_path / "u", plain)
    for name in c:
        assert c[name][0] == p[name][0]                             # the recipe's type either way
    down, gate = c["blk.0.ffn_down_exps.weight"][1], c["blk.0.ffn_gate_exps.weight"][1]
    assert (down[3] == p["blk.0.ffn_down_exps.weight"][1][3]).all()
    assert not (down[0] == p["blk.0.ffn_down_exps.weight"][1][0]).all()
    assert not (gate[3] == p["blk.0.ffn_gate_exps.weight"][1][3]).all()


def test_expert_statistics_are_each_experts_own_tokens_shrunk_toward_a_prior():
    import numpy as np
    import torch

    from edgellm.exporters.calibrate.common import EXPERT_PRIOR_TOKENS as K, ExpertStats

    torch.manual_seed(0)
    mod = torch.nn.Module()
    mod.gate_up_proj = torch.nn.Parameter(torch.randn(4, 2 * 6, 5))
    mod.act_fn = torch.nn.functional.silu
    x = torch.randn(10, 5)
    chosen = torch.tensor([[0, 1]] * 6 + [[1, 2]] * 4)              # expert 3 never; expert 2 four tokens
    st = ExpertStats(("g", "u"), "d", 4, 5, 6, "cpu")
    st.record(mod, x, chosen)
    imp = st.importance()
    assert imp["g"] is imp["u"] and imp["d"][3] is None
    every = (x * x).mean(0).numpy()
    np.testing.assert_allclose(imp["g"][3], every, rtol=1e-5)       # unreached: what any token brings
    own = (x[6:] ** 2).sum(0).numpy()
    np.testing.assert_allclose(imp["g"][2], (own + K * every) / (4 + K), rtol=1e-5)
    g, u = (x[6:] @ mod.gate_up_proj[2].T).chunk(2, -1)
    a2 = ((torch.nn.functional.silu(g) * u) ** 2).detach()
    want = (a2.sum(0) + K * a2.mean(0).mean()) / (4 + K)
    np.testing.assert_allclose(imp["d"][2], want.numpy(), rtol=1e-5)
    assert st.summary() == {"experts": 4, "unreached": 1, "min_tokens": 0, "median_tokens": 5.0}
