"""Kernel costs per ggml tensor type measured with llama.cpp itself (`device measure --kernels`),
and a planner that sums a build's tensors at their own type's cost: per-build speed, not one
figure per runtime."""

import dataclasses
import json

import numpy as np
import pytest

from edgellm import devices
from edgellm.devices import kernels
from edgellm.models.families import from_config_dict
from edgellm.formats.choice import BuildChoice
from edgellm.plan.estimate import estimate
from edgellm.devices.kernel_model import RuntimeCost, TypeRate, decode_seconds, loads, prefill_seconds
from edgellm.runtime.synthetic_gguf import Shape

SMALL = ((Shape(hidden=256, ffn=768, layers=4, heads=4, kv_heads=2, vocab=512, context=2048),
          Shape(hidden=512, ffn=1536, layers=1, heads=4, kv_heads=2, vocab=512, context=2048)),
         tuple(Shape(hidden=64, ffn=256, layers=n, heads=1, kv_heads=1, vocab=512, context=2048) for n in (2, 6, 12)))


def _qwen_like():
    return from_config_dict({"model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"], "hidden_size": 896,
                             "intermediate_size": 4864, "num_hidden_layers": 24, "num_attention_heads": 14,
                             "num_key_value_heads": 2, "vocab_size": 151936, "tie_word_embeddings": True,
                             "max_position_embeddings": 32768}, "qwen-like")


ATTENTION = tuple(Shape(hidden=128, ffn=64, layers=4, heads=8, kv_heads=2, vocab=512, context=2048, head_dim=hd)
                  for hd in (32, 64))


def test_measured_costs_come_back_for_the_runtime_and_each_type():
    report, notes = {}, []          # notes: measured anyway on a busy CI machine (the refusal is tested in test_busy)
    costs = kernels.measure_kernels(2, types=("Q4_0",), source="test", shapes=SMALL, report=report, notes=notes,
                                    attention_shapes=ATTENTION)
    assert all(isinstance(n, str) and n for n in notes)
    assert set(costs) == {"llama.cpp", "llama.cpp:Q8_0", "llama.cpp:Q4_0"}      # Q8_0 carries the runtime's
    assert 0 <= report["drift"] < 10            # the first probe timed again at the end
    assert kernels.drift((1.0, 2.0), (1.2, 1.9)) == pytest.approx(0.2)
    assert isinstance(costs["llama.cpp"], RuntimeCost) and costs["llama.cpp"].attention_gflops > 0
    per_head = {(kv, hd): ns for kv, hd, ns in costs["llama.cpp"].attention_ns}   # decode attention, from depth
    assert set(per_head) <= {(kv, hd) for kv in ("f16", "q8_0") for hd in (32, 64)}
    assert len(per_head) >= 2 and all(0 < ns < 1e4 for ns in per_head.values())
    prompt = costs["llama.cpp"].prefill_attention_ns        # a prompt's attention, from the same prompt deeper
    assert {(kv, hd) for kv, hd, _ in prompt} <= {(kv, hd) for kv in ("f16", "q8_0") for hd in (32, 64)}
    assert all(0 < ns < 1e4 for *_, ns in prompt)
    for key in ("llama.cpp:Q8_0", "llama.cpp:Q4_0"):
        r = costs[key]
        assert r.source == "test" and min(r.decode_row_ns, r.decode_weight_ps, r.prefill_weight_ps) >= 0
        assert r.decode_row_ns + r.decode_weight_ps > 0 and r.prefill_row_ns + r.prefill_weight_ps > 0


def test_the_fit_recovers_known_costs_from_the_probes_timings():
    """Timings made by the model itself from known costs are fitted back to those costs."""
    cost = RuntimeCost(token_us=40.0, layer_us=30.0)
    truth = {"Q8_0": TypeRate(24.0, 28.0, 7.7, 3.8), "Q4_K": TypeRate(30.0, 12.0, 6.0, 3.0)}
    probes, tiny = kernels._shapes()
    timings = {}
    for ty, rate in truth.items():
        for shape in probes + (tiny if ty == "Q8_0" else ()):
            load = kernels.probe_load(shape, ty)
            d = decode_seconds({ty: load}, {ty: rate}, cost, {}, shape.layers)
            p = prefill_seconds({ty: load}, {ty: rate}, kernels.PROMPT, {})
            timings.setdefault(ty, []).append((load, p, d))
    got = kernels.fit(timings, 50.0, "t")
    assert got["llama.cpp"].attention_gflops == 50.0
    assert got["llama.cpp"].token_us == pytest.approx(40.0, rel=1e-3)
    assert got["llama.cpp"].layer_us == pytest.approx(30.0, rel=1e-3)
    for ty, rate in truth.items():
        r = got[f"llama.cpp:{ty}"]
        assert (r.decode_row_ns, r.decode_weight_ps, r.prefill_row_ns, r.prefill_weight_ps) == \
            pytest.approx((rate.decode_row_ns, rate.decode_weight_ps, rate.prefill_row_ns, rate.prefill_weight_ps),
                          rel=1e-3)


def test_onnx_runtimes_decode_is_fitted_per_weight_only():
    """ONNX Runtime's decode rates have no per-row term (its per-product cost is not per row, and
    the two probes cannot tell the two apart); the weight rate is the probes' own, whatever part a
    row term would have taken."""
    cost = RuntimeCost(token_us=40.0, layer_us=30.0)
    base, int8 = TypeRate(0.0, 200.0, 4.5, 14.7), TypeRate(49.0, 62.4, 6.6, 23.8)
    probes, tiny = kernels._shapes()
    timings = {}
    for ty, rate in (("fp32", base), ("int8", int8)):
        for shape in probes + (tiny if ty == "fp32" else ()):
            load = kernels.onnx_probe_load(shape)
            timings.setdefault(ty, []).append((load, prefill_seconds({ty: load}, {ty: rate}, kernels.PROMPT, {}),
                                               decode_seconds({ty: load}, {ty: rate}, cost, {}, shape.layers)))
    got = kernels.fit(timings, 50.0, "t", "onnxruntime", "fp32", decode_rows=False)["onnxruntime:int8"]
    assert got.decode_row_ns == 0
    per_weight = [(d - 40e-6 - 30e-6 * ld.layers) / ld.decode()[1] * 1e12 for ld, _, d in timings["int8"]]
    assert min(per_weight) <= got.decode_weight_ps <= max(per_weight)
    assert (got.prefill_row_ns, got.prefill_weight_ps) == pytest.approx((6.6, 23.8), rel=1e-3)


def test_the_probes_prompt_attention_is_taken_out_of_the_prefill_fit():
    """Prefill timings made from known rates plus the probes' own prompt attention (an f16 cache at
    their head sizes) fit back to the rates once that attention is taken out; a probe head size with
    no figure leaves the timings, and the attention, as they were."""
    truth, f16 = TypeRate(24.0, 28.0, 7.7, 3.8), (("f16", 64, 3.0), ("f16", 128, 4.5), ("q8_0", 64, 13.0))
    probes, _ = kernels._shapes()
    cost = RuntimeCost(token_us=0.0, prefill_attention_ns=f16)
    timings = {"Q8_0": []}
    for shape in probes:
        load = kernels.probe_load(shape, "Q8_0")
        positions = kernels._probe_model(shape).prompt_head_positions(kernels.PROMPT)
        assert positions == shape.heads * shape.layers * kernels.PROMPT * (kernels.PROMPT + 1) // 2
        p = prefill_seconds({"Q8_0": load}, {"Q8_0": truth}, kernels.PROMPT, {}) + \
            cost.prefill_attention_seconds("f16", shape.hd, positions)
        timings["Q8_0"].append((load, p, 0.01))
    clean, kept = kernels.without_prompt_attention(timings, probes, f16)
    assert kept == f16
    r = kernels.fit(clean, None, "t", prefill_attention_ns=kept)["llama.cpp:Q8_0"]
    assert (r.prefill_row_ns, r.prefill_weight_ps) == pytest.approx((7.7, 3.8), rel=1e-3)
    assert kernels.without_prompt_attention(timings, probes, f16[:1]) == (timings, ())


def test_a_prompts_attention_is_priced_per_cache_type_and_head_size():
    """Prefill adds the prompt's attention at the build's cache type (a q8_0 cache runs llama.cpp's
    row-at-a-time kernel: 3-5x an f16 cache's tiled one here); a head size not measured takes the
    nearest one's in proportion to its size; a profile without prompt figures adds nothing (its
    per-type rates carry their probes' attention)."""
    device = devices.find("laptop-x86-16gb")
    model = _qwen_like()                                      # heads of 64, 14 of them, 24 layers
    rate = {"Q8_0": TypeRate(24.0, 28.0, 7.7, 3.8)}

    def plan(kv: str, **cost):
        tuned = dataclasses.replace(device, kernels=(("llama.cpp", RuntimeCost(token_us=50.0, **cost)),
                                                     *((f"llama.cpp:{t}", r) for t, r in rate.items())))
        return estimate(model, tuned, BuildChoice("gguf", "Q8_0", kv), 4096)

    table = (("f16", 64, 3.0), ("q8_0", 64, 13.0), ("q8_0", 128, 20.0))
    bare, f16, q8 = plan("f16"), plan("f16", prefill_attention_ns=table), plan("q8_0", prefill_attention_ns=table)
    positions = 14 * 24 * 512 * 513 // 2
    assert model.prompt_head_positions(512) == positions
    assert 512 / f16.prefill_tps - 512 / bare.prefill_tps == pytest.approx(3e-9 * positions, rel=1e-6)
    assert 512 / q8.prefill_tps - 512 / bare.prefill_tps == pytest.approx(13e-9 * positions, rel=1e-6)
    wide = RuntimeCost(token_us=0.0, prefill_attention_ns=table)
    assert wide.prefill_attention_seconds("q8_0", 96, 1e9) == pytest.approx(13.0 * 96 / 64)    # nearest: 64
    assert wide.prefill_attention_seconds("q8_0", 256, 1e9) == pytest.approx(20.0 * 2)
    assert wide.prefill_attention_seconds("q4_0", 64, 1e9) == pytest.approx(3.0)     # none of its own: f16's
    f16_only = RuntimeCost(token_us=0.0, prefill_attention_ns=table[:1])   # q8_0's lost in a noisy timing
    assert f16_only.prefill_attention_seconds("q8_0", 64, 1e9) == pytest.approx(3.0)    # f16's: a lower bound
    assert RuntimeCost(token_us=0.0).prefill_attention_seconds("f16", 64, 1e9) is None
    windowed = dataclasses.replace(model, windows=(8,) * 24)
    assert windowed.prompt_head_positions(512) == 14 * 24 * (8 * 9 // 2 + (512 - 8) * 8)


def test_the_attention_probes_have_the_head_size_they_are_named_for(tmp_path):
    """A probe's heads are its own size, not hidden / heads, in the tensors and in the metadata
    llama.cpp builds the graph from."""
    from edgellm.runtime.gguf_check import read_header
    from edgellm.runtime.synthetic_gguf import tensors, write

    shape = kernels._attention_shapes()[-1]
    assert (shape.hidden, shape.heads, shape.kv_heads, shape.hd) == (512, 16, 4, kernels.ATTENTION_HEAD_DIMS[-1])
    dims = dict(tensors(shape))
    assert dims["blk.0.attn_q.weight"] == (16 * shape.hd, 512) and dims["blk.0.attn_output.weight"] == (512, 16 * shape.hd)
    assert dims["blk.0.attn_k.weight"] == (4 * shape.hd, 512)
    small = Shape(hidden=64, ffn=32, layers=1, heads=2, kv_heads=1, vocab=300, context=256, head_dim=48)
    meta = read_header(write(tmp_path / "p.gguf", small)).metadata
    assert meta["llama.attention.key_length"] == meta["llama.attention.value_length"] == 48
    assert meta["llama.rope.dimension_count"] == 48


def test_decode_attention_is_priced_per_head_size_where_measured():
    """The measured figure for the model's head size replaces the one FLOP rate (a 128-wide head
    measured 2-4x cheaper per FLOP than a 64-wide one on a CPU with 128-wide half-precision steps);
    another head size, or another cache type, keeps the FLOP rate."""
    device = devices.find("laptop-x86-16gb")
    model = _qwen_like()                                      # heads of 64
    rate = {"Q8_0": TypeRate(24.0, 28.0, 7.7, 3.8)}

    def tuned(**cost):
        return dataclasses.replace(device, kernels=(("llama.cpp", RuntimeCost(token_us=50.0, attention_gflops=4.0,
                                                                              **cost)),
                                                    *((f"llama.cpp:{t}", r) for t, r in rate.items())))

    q8, q8kv = BuildChoice("gguf", "Q8_0", "f16"), BuildChoice("gguf", "Q8_0", "q8_0")
    flop_rate = estimate(model, tuned(), q8, 4096)
    other = estimate(model, tuned(attention_ns=(("f16", 128, 1.0), ("q8_0", 64, 1.0))), q8, 4096)
    assert other.decode_tps == flop_rate.decode_tps           # no figure for heads of 64: the FLOP rate
    cheap = estimate(model, tuned(attention_ns=(("f16", 64, 1.0), ("f16", 128, 500.0))), q8, 4096)
    dear = estimate(model, tuned(attention_ns=(("f16", 64, 500.0),)), q8, 4096)
    assert cheap.decode_tps > flop_rate.decode_tps > dear.decode_tps
    positions = 512 + 64                                      # the planner's position
    heads_positions = model.n_heads * model.n_layers * positions
    assert 1 / dear.decode_tps - 1 / cheap.decode_tps == pytest.approx(499e-9 * heads_positions, rel=1e-6)
    assert estimate(model, tuned(attention_ns=(("f16", 64, 500.0),)), q8kv, 4096).decode_tps == \
        estimate(model, tuned(), q8kv, 4096).decode_tps       # a q8_0 cache: not what was measured
    assert estimate(model, tuned(attention_ns=(("q8_0", 64, 1.0),)), q8kv, 4096).decode_tps > \
        estimate(model, tuned(), q8kv, 4096).decode_tps


def test_a_profile_reads_attention_per_head_size_and_refuses_nonsense(tmp_path):
    from edgellm.errors import BadInput

    base = open(devices.find("laptop-x86-16gb").source).read()
    p = tmp_path / "d.toml"
    p.write_text(base + '\n[kernels]\n"llama.cpp" = { token_us = 5, attention_ns = { "q8_0:64" = 30, "f16:64" = 60.5, '
                        '"f16:128" = 24 } }\n')
    assert devices.catalog.load_file(p).kernel("llama.cpp").attention_ns == \
        (("f16", 64, 60.5), ("f16", 128, 24.0), ("q8_0", 64, 30.0))
    for table, match in [('{ "f16:64" = -1 }', "expected a number > 0"), ('{ x = 1 }', "keys are a cache type"),
                         ('{ "f16:0" = 1 }', "keys are"), ('{ "f16:99999" = 1 }', "keys are"), ('{ "q4:64" = 1 }', "keys are"),
                         ('{ 64 = 1 }', "keys are"), ('{ "f16:\u00b2" = 1 }', "keys are"),
                         ('{ "f16:064" = 1 }', "keys are"), ("5", "expected a table")]:
        p.write_text(base + f'\n[kernels]\n"llama.cpp" = {{ token_us = 5, attention_ns = {table} }}\n')
        with pytest.raises(BadInput, match="kernels.llama.cpp.attention_ns: " + match):
            devices.catalog.load_file(p)


def test_nnls_drops_a_column_that_would_come_out_negative():
    a = np.array([[1.0, 1.0], [1.0, 2.0], [1.0, 3.0]])
    x = kernels.nnls(a, np.array([3.0, 2.0, 1.0]))          # unconstrained slope would be negative
    assert x[1] == 0 and x[0] > 0


def _tuned(device, **types):
    cost = ("llama.cpp", RuntimeCost(token_us=50.0))
    return dataclasses.replace(device, kernels=(cost, *((f"llama.cpp:{t}", r) for t, r in types.items())))


def test_the_plan_is_the_sum_of_each_tensor_at_its_own_types_cost():
    device = devices.find("laptop-x86-16gb")
    model = _qwen_like()
    rates = {"Q8_0": TypeRate(24.0, 28.0, 7.7, 3.8), "Q4_0": TypeRate(17.0, 16.0, 7.0, 3.7)}
    tuned = _tuned(device, **rates)
    choice = BuildChoice("gguf", "Q4_0", "f16")
    e = estimate(model, tuned, choice, 1024)
    from edgellm.plan.estimate import kv_bytes
    from edgellm.formats.gguf_recipes import tensor_types

    load = loads(model, tensor_types(model, "Q4_0"))
    assert set(load) == {"Q4_0", "Q8_0"}                  # the tied Q8_0 head is read every token
    want = decode_seconds(load, rates, tuned.kernel("llama.cpp"), {}) + \
        kv_bytes(model, choice, 512 + 64) / device.memory.effective_bandwidth
    assert e.decode_tps == pytest.approx(1 / want, rel=1e-6)
    assert e.prefill_tps == pytest.approx(512 / prefill_seconds(load, rates, 512, {}), rel=1e-6)
    assert estimate(model, tuned, choice, 256).decode_tps > e.decode_tps      # less cache to read


def test_a_type_measured_faster_is_predicted_faster_and_a_missing_one_falls_back():
    device = devices.find("laptop-x86-16gb")
    model = _qwen_like()
    fast, slow = TypeRate(10.0, 10.0, 4.0, 2.0), TypeRate(40.0, 40.0, 20.0, 10.0)
    tuned = _tuned(device, Q8_0=fast, Q4_0=fast, Q5_0=slow, Q6_K=slow, Q4_K=slow)
    q40 = estimate(model, tuned, BuildChoice("gguf", "Q4_0", "f16"), 1024)
    q4km = estimate(model, tuned, BuildChoice("gguf", "Q4_K_M", "f16"), 1024)
    assert q40.decode_tps > 1.5 * q4km.decode_tps and q40.prefill_tps > q4km.prefill_tps
    plain = estimate(model, device, BuildChoice("gguf", "Q4_K_M", "f16"), 1024)
    assert plain.decode_tps != q4km.decode_tps          # without [kernels]: the roofline
    partial = estimate(model, _tuned(device, Q8_0=fast), BuildChoice("gguf", "Q4_0", "f16"), 1024)
    assert 0 < partial.decode_tps and 0 < partial.prefill_tps   # Q4_0 unmeasured: at the bandwidth


def test_a_profile_with_kernels_parses_and_bad_entries_are_named(tmp_path):
    from edgellm.errors import BadInput

    base = open(devices.find("laptop-x86-16gb").source).read()
    good = base + ('\n[kernels]\n"llama.cpp" = { token_us = 50.5, source = "x" }\n'
                   '"llama.cpp:Q4_0" = { decode_row_ns = 17, decode_weight_ps = 16.4, prefill_weight_ps = 6 }\n')
    p = tmp_path / "d.toml"
    p.write_text(good)
    d = devices.catalog.load_file(p)
    assert d.kernel("llama.cpp:Q4_0").decode_weight_ps == 16.4 and d.kernel("llama.cpp:Q8_0") is None
    assert d.kernel("llama.cpp").token_us == 50.5
    for entry, match in [
            ('"llama.cpp:Q4_0" = { decode_row_ns = -1, decode_weight_ps = 1, prefill_weight_ps = 1 }',
             "kernels.llama.cpp:Q4_0.decode_row_ns"),
            ('"llama.cpp:Q9_9" = { decode_row_ns = 1, decode_weight_ps = 1, prefill_weight_ps = 1 }',
             "kernels.llama.cpp:Q9_9: not a runtime"),
            ('"llama.cpp:Q4_0" = { decode_bandwidth_share = 0.8, prefill_gflops = 40.0 }',
             "written by an older edgellm"),
            ('"llama.cpp" = { source = "x" }', "kernels.llama.cpp.token_us: missing")]:
        p.write_text(base + "\n[kernels]\n" + entry + "\n")
        with pytest.raises(BadInput, match=match):
            devices.catalog.load_file(p)


def test_device_measure_kernels_writes_them(cli, run_cli, tmp_path, monkeypatch):
    """What `device measure --kernels` writes and the plan reads: in this process, on the small
    probes (the full-size ones took 50 s here), since the rates themselves are not checked here;
    the same command runs as its own process in test_cli."""
    monkeypatch.setattr(kernels, "_shapes", lambda: SMALL)
    out = tmp_path / "here.toml"
    r = cli("device", "measure", "--kernels", "INT8", "--allow-busy", "-o", str(out))  # llama.cpp's: above
    assert r.returncode == 0, r.stderr
    d = devices.catalog.load_file(out)
    assert {k for k, _ in d.kernels} == {"onnxruntime", "onnxruntime:int4/32", "onnxruntime:int8"}
    assert "measuring ONNX Runtime int8 kernels" in r.stderr and "llama.cpp" not in r.stderr
    # the plan reads them: the ONNX int8 build's speed is from the profile's rates, int4/128's is not
    plan = json.loads(run_cli("plan", "Qwen/Qwen2.5-0.5B-Instruct", "--device", str(out), "--json").stdout)
    basis = {c["label"]: c["speed"] for c in plan["candidates"]}
    assert basis["onnx int8"]["basis"] == "measured" and "device measure" in basis["onnx int8"]["source"]
    assert basis["onnx int4/128"] == {"basis": "partly measured", "estimated_types": ["int4/128"],
                                      "source": basis["onnx int8"]["source"]}
    assert basis["gguf Q8_0"]["basis"] == "estimate"
    text = run_cli("plan", "Qwen/Qwen2.5-0.5B-Instruct", "--device", str(out)).stdout
    row = {" ".join(line[3:].split()[:2]): line[3:].split() for line in text.splitlines() if line[3:8] in ("onnx ", "gguf ")}
    assert not row["onnx int8"][7].startswith("~") and row["onnx int4/128"][7].startswith("~")     # prefill/s
    assert "speeds of 2 of" in text and "from the profile's kernel rates (measured by edgellm device measure" in text
    assert "~ speeds are estimates" in text and "no rate for (fp32, int4/128)" in text
    bad = run_cli("device", "measure", "--kernels", "Q4_K_M", "-o", str(out))
    assert bad.returncode == 2 and "not a measurable weight type: Q4_K_M" in bad.stderr


def test_onnx_kernels_are_measured_on_probes_onnx_runtime_runs():
    costs = kernels.measure_onnx_kernels(2, types=("int8", "fp32"), source="test", shapes=SMALL, notes=[])
    assert set(costs) == {"onnxruntime", "onnxruntime:int4/32", "onnxruntime:int8", "onnxruntime:fp32"}
    assert costs["onnxruntime"].attention_gflops > 0           # GroupQueryAttention's rate, from depth
    for key in ("onnxruntime:int4/32", "onnxruntime:int8", "onnxruntime:fp32"):
        r = costs[key]
        assert r.decode_row_ns + r.decode_weight_ps > 0 and r.prefill_row_ns + r.prefill_weight_ps > 0


def test_the_onnx_probe_is_a_model_onnx_reads_with_the_exporters_kernels(tmp_path):
    """The hand-written protobuf (no onnx package on the device) parses as the graph it means:
    MatMulNBits as the exporter writes them, every projection of every layer."""
    import onnx

    from edgellm.runtime import onnx_probe

    shape = SMALL[0][0]
    m = onnx.load(str(onnx_probe.write(tmp_path / "p.onnx", shape, "int4/128")))
    mm = [n for n in m.graph.node if n.op_type == "MatMulNBits"]
    assert len(mm) == 5 * shape.layers and all(n.domain == "com.microsoft" for n in mm)      # qkv packed, o, MLP
    assert sum(n.op_type == "GroupQueryAttention" for n in m.graph.node) == shape.layers
    attrs = {a.name: a.i for a in mm[0].attribute}
    assert attrs == {"K": 256, "N": 256 + 2 * 128, "bits": 4, "block_size": 128, "accuracy_level": 4}
    inits = {t.name: t for t in m.graph.initializer}
    assert list(inits["l0.qkv.q"].dims) == [512, 2, 64] and list(inits["l0.down.s"].dims) == [256, 6]
    assert kernels.onnx_probe_load(shape).weights == sum(
        a.i * b.i for n in mm for a in n.attribute for b in n.attribute if a.name == "K" and b.name == "N")
    assert len(m.graph.output) == 1 + 2 * shape.layers           # the hidden state and the new cache
    with pytest.raises(ValueError, match="not a probe weight type"):
        onnx_probe.write(tmp_path / "q.onnx", shape, "int3")


def test_onnx_builds_are_planned_from_the_onnx_rates():
    device = devices.find("laptop-x86-16gb")
    model = _qwen_like()
    choice = BuildChoice("onnx", "int4", "f32", block_size=32)
    plain = estimate(model, device, choice, 1024)
    assert plain.speed_basis == "estimate"
    rate = TypeRate(10.0, 10.0, 4.0, 2.0)
    tuned = dataclasses.replace(device, kernels=(("onnxruntime", RuntimeCost(token_us=100.0, source="here")),
                                                 ("onnxruntime:int4/32", rate), ("onnxruntime:fp32", rate)))
    e = estimate(model, tuned, choice, 1024)
    from edgellm.formats import format_for
    from edgellm.plan.estimate import kv_bytes

    load = loads(model, format_for(choice).typed_tensors(model, choice))
    assert set(load) == {"int4/32"}                        # every matrix, the tied head included
    want = decode_seconds(load, {"int4/32": rate}, RuntimeCost(token_us=100.0), {}) + \
        kv_bytes(model, choice, 512 + 64) / device.memory.effective_bandwidth
    assert e.decode_tps == pytest.approx(1 / want, rel=1e-6)
    assert (e.speed_basis, e.estimated_types, e.speed_source) == ("measured", (), "here")


def test_a_busy_machine_is_caught_and_refused(run_cli, tmp_path, monkeypatch):
    """Another process spinning on a core: its CPU time is seen, a disturbed timing is taken
    again, then refused; `device measure` refuses before measuring anything (exit code 7)."""
    import subprocess
    import sys

    from edgellm.errors import MachineBusy
    from edgellm.runtime import busy

    spin = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        others = busy.others_now(1.0)
        assert others is not None and others > 0.6
        assert "other processes used" in busy.verdict(others)
        r = run_cli("device", "measure", "--no-kernels", "-o", str(tmp_path / "x.toml"))
        assert r.returncode == 7, r.stderr
        assert "the machine is busy: other processes use" in r.stderr and not (tmp_path / "x.toml").exists()
    finally:
        spin.kill()
        spin.wait()
    monkeypatch.setattr(busy.time, "sleep", lambda s: None)
    # the spread alone, whatever else runs on the test's host (CI's shared host had 24 cores busy)
    monkeypatch.setattr(busy, "_busy_seconds", lambda: None)
    runs = []
    with pytest.raises(MachineBusy, match=r"repeats differ by 100% \(3 tries\)"):
        kernels.timed("a probe", lambda: runs.append(1) or ((1.0, 2.0, 1.5), (1.0, 1.0, 1.0)), lambda s: None)
    assert len(runs) == busy.TRIES
    assert kernels.timed("a probe", lambda: ((1.0, 1.1, 1.05), (2.0, 2.0, 2.1)), lambda s: None) == (1.05, 2.0)
    notes = []                                   # --allow-busy: kept, and said
    assert kernels.timed("a probe", lambda: ((1.0, 2.0, 1.5), (1.0, 1.0, 1.0)), lambda s: None, notes) == (1.5, 1.0)
    assert notes == ["a probe: its repeats differ by 100%"]


def test_allow_busy_keeps_the_figures_and_the_profile_says_so(monkeypatch):
    from edgellm.devices import measure
    from edgellm.errors import MachineBusy
    from edgellm.runtime import busy, membench

    monkeypatch.setattr(busy, "others_now", lambda seconds=1.0, threads=None: 1.5)
    monkeypatch.setattr(busy.time, "sleep", lambda s: None)
    with pytest.raises(MachineBusy, match="other processes use 1.50 cores now"):
        measure.measure("x", kernels=False)
    monkeypatch.setattr(membench, "matmul_throughput", lambda n, passes=1: 1e11)
    prof, text = measure.measure("x", kernels=False, allow_busy=True, buffer_bytes=8 << 20)
    assert "# MEASURED ON A BUSY MACHINE (--allow-busy)" in text and "other processes used 1.50 cores" in text
    assert prof.cpu.fp32_measured == 1e11
    assert busy.spread([3.0, 2.0]) == 0.5 and busy.spread([0.0, 1.0]) == 0.0
    # a container on a large host: other work on cores a measurement leaves free does not count
    monkeypatch.setattr(busy, "_cpus", lambda: set(range(64)))
    assert busy.spare_cores(2) == 62 and busy.spare_cores(64) == 0 and busy.spare_cores(None) == 0


def test_a_tick_of_counting_is_not_a_busy_machine(monkeypatch):
    """/proc/stat counts in ticks: a span of microseconds that reads one tick more is quiet, while
    a second in which another core was busy throughout is not."""
    from edgellm.runtime import busy

    tick = 1 / busy.os.sysconf("SC_CLK_TCK")
    reads = iter([100.0, 100.0 + tick])
    monkeypatch.setattr(busy, "_busy_seconds", lambda: next(reads))
    monkeypatch.setattr(busy, "_own_seconds", lambda: 5.0)
    with busy.Watch() as w:
        pass
    assert w.others == 0.0
    clock = iter([0.0, 1.0])
    monkeypatch.setattr(busy.time, "perf_counter", lambda: next(clock))
    reads = iter([100.0, 101.0])
    with busy.Watch() as w:
        pass
    assert 0.8 < w.others <= 1.0


def test_a_remote_measurement_writes_attention_figures_its_parser_reads_back():
    """`device measure --remote` re-writes the far side's checked profile: the per-head attention
    table must come back as the table the schema reads (a list of lists was refused, and an ONNX
    runtime's empty one too)."""
    import tomllib

    from edgellm.cli.devices_cmd import _profile_toml
    from edgellm.devices.schema import profile_from_dict

    device = devices.find("laptop-x86-16gb")
    kernels = (("llama.cpp", RuntimeCost(token_us=1.5, attention_gflops=4.4, layer_us=2.0, source="far [x]",
                                         attention_ns=(("f16", 64, 64.6), ("q8_0", 128, 36.8)),
                                         prefill_attention_ns=(("f16", 64, 3.1), ("q8_0", 256, 40.5)))),
               ("onnxruntime", RuntimeCost(token_us=0.0, source="far")),
               ("llama.cpp:Q4_0", TypeRate(17.0, 16.0, 7.0, 3.7, source="far")))
    text = _profile_toml(dataclasses.replace(device, kernels=kernels), "pi")
    back = profile_from_dict(tomllib.loads(text), "<remote>")
    assert back.kernel("llama.cpp") == kernels[0][1] and back.kernel("onnxruntime") == kernels[1][1]
    assert back.kernel("llama.cpp:Q4_0") == kernels[2][1]


def test_probes_decode_from_cold_caches(tmp_path):
    """Decode is timed with the caches refilled before every token (a cloud Xeon's 480 MiB L3 held
    a 53 MB probe and decoded it 2.4x faster per weight than a 400 MB model): the evictor runs once
    per decoded token, outside the timing, and reads about twice the last-level cache."""
    from edgellm.runtime import hostinfo, membench
    from edgellm.runtime.llamacpp import LlamaCppModel
    from edgellm.runtime.synthetic_gguf import write

    assert hostinfo.cache_size("491520K") == 480 << 20 and hostinfo.cache_size("2M") == 2 << 20
    assert hostinfo.cache_size("33554432") == 32 << 20
    for bad in (None, "", "K", "0K", "12x", "\u0663K", "9" * 13):
        assert hostinfo.cache_size(bad) is None
    found = hostinfo.last_level_cache_bytes()
    assert found is None or found > 0
    assert membench.CacheEvictor(None, 8 << 30).nbytes == 64 << 20          # unknown cache: 64 MiB
    assert membench.CacheEvictor(40 << 20, 8 << 30).nbytes == 80 << 20
    assert membench.CacheEvictor(480 << 20, 1 << 30).nbytes == 128 << 20    # never over an eighth of RAM
    assert membench.CacheEvictor(480 << 20, 8 << 30, 100 << 20).nbytes == 25 << 20     # a quarter of what is free
    assert membench.CacheEvictor(None, 8 << 30, 1 << 20).nbytes == 8 << 20  # but at least 8 MiB
    avail = hostinfo.available_bytes()
    assert avail is None or avail > 0
    calls = []
    path = write(tmp_path / "p.gguf", Shape(hidden=64, ffn=128, layers=2, heads=2, kv_heads=1, vocab=300, context=256))
    m = LlamaCppModel.open(path, n_ctx=128, threads=1)
    p = m.profile(4, 5, 2, evict=lambda: calls.append(1))
    assert len(calls) == 2 * 5 and all(t > 0 for t in p.samples_decode_tps)
