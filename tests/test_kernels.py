"""Kernel costs per ggml tensor type measured with llama.cpp itself (`device measure --kernels`),
and a planner that sums a build's tensors at their own type's cost: per-build speed, not one
figure per runtime."""

import dataclasses

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
         tuple(Shape(hidden=64, ffn=256, layers=n, heads=1, kv_heads=1, vocab=512, context=2048) for n in (2, 6)))


def _qwen_like():
    return from_config_dict({"model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"], "hidden_size": 896,
                             "intermediate_size": 4864, "num_hidden_layers": 24, "num_attention_heads": 14,
                             "num_key_value_heads": 2, "vocab_size": 151936, "tie_word_embeddings": True,
                             "max_position_embeddings": 32768}, "qwen-like")


def test_measured_costs_come_back_for_the_runtime_and_each_type():
    costs = kernels.measure_kernels(2, types=("Q4_0",), source="test", shapes=SMALL)
    assert set(costs) == {"llama.cpp", "llama.cpp:Q8_0", "llama.cpp:Q4_0"}      # Q8_0 carries the runtime's
    assert isinstance(costs["llama.cpp"], RuntimeCost) and costs["llama.cpp"].attention_gflops > 0
    for key in ("llama.cpp:Q8_0", "llama.cpp:Q4_0"):
        r = costs[key]
        assert r.source == "test" and min(r.decode_row_ns, r.decode_weight_ps, r.prefill_weight_ps) >= 0
        assert r.decode_row_ns + r.decode_weight_ps > 0 and r.prefill_row_ns + r.prefill_weight_ps > 0


def test_the_fit_recovers_known_costs_from_the_probes_timings():
    """Timings made by the model itself from known costs are fitted back to those costs."""
    cost = RuntimeCost(token_us=40.0)
    truth = {"Q8_0": TypeRate(24.0, 28.0, 7.7, 3.8), "Q4_K": TypeRate(30.0, 12.0, 6.0, 3.0)}
    probes, tiny = kernels._shapes()
    timings = {}
    for ty, rate in truth.items():
        for shape in probes + (tiny if ty == "Q8_0" else ()):
            load = kernels.probe_load(shape, ty)
            d = decode_seconds({ty: load}, {ty: rate}, cost, {})
            p = prefill_seconds({ty: load}, {ty: rate}, kernels.PROMPT, {})
            timings.setdefault(ty, []).append((load, p, d))
    got = kernels.fit(timings, 50.0, "t")
    assert got["llama.cpp"].attention_gflops == 50.0
    assert got["llama.cpp"].token_us == pytest.approx(40.0, rel=1e-3)
    for ty, rate in truth.items():
        r = got[f"llama.cpp:{ty}"]
        assert (r.decode_row_ns, r.decode_weight_ps, r.prefill_row_ns, r.prefill_weight_ps) == \
            pytest.approx((rate.decode_row_ns, rate.decode_weight_ps, rate.prefill_row_ns, rate.prefill_weight_ps),
                          rel=1e-3)


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


def test_device_measure_kernels_writes_them(run_cli, tmp_path):
    out = tmp_path / "here.toml"
    r = run_cli("device", "measure", "--kernels", "Q8_0,Q4_K", "-o", str(out), timeout=600)
    assert r.returncode == 0, r.stderr
    d = devices.catalog.load_file(out)
    assert {k for k, _ in d.kernels} == {"llama.cpp", "llama.cpp:Q8_0", "llama.cpp:Q4_K"}
    assert "measuring llama.cpp Q4_K kernels" in r.stderr
    bad = run_cli("device", "measure", "--kernels", "Q4_K_M", "-o", str(out))
    assert bad.returncode == 2 and "not a measurable ggml type: Q4_K_M" in bad.stderr
