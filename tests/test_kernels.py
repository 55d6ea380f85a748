"""Kernel rates per quant type measured with llama.cpp itself (`device measure --kernels`), and a
planner that uses them: per-build speed, not one figure per runtime."""

import dataclasses

import pytest

from edgellm import devices
from edgellm.devices.kernels import KernelRate, _probe_config, measure_kernels
from edgellm.models.families import from_config_dict
from edgellm.plan.build import BuildChoice
from edgellm.plan.estimate import estimate
from edgellm.runtime.synthetic_gguf import Shape

TINY = Shape(hidden=256, ffn=512, layers=2, heads=4, kv_heads=2, vocab=512, context=256)


def test_measured_rates_are_positive_and_in_the_planners_terms():
    rates = measure_kernels(20e9, 2, types=("Q8_0", "Q4_0"), shape=TINY, source="test")
    assert set(rates) == {"llama.cpp:Q8_0", "llama.cpp:Q4_0"}
    for r in rates.values():
        assert r.decode_bandwidth_share > 0 and r.prefill_gflops > 0 and r.source == "test"


def test_the_plan_reproduces_what_was_measured_on_the_probe_model():
    """Round trip: rates measured on a model, then the estimate for that same model and device,
    give back the measured speeds (the rates are defined in the estimate's own terms)."""
    from edgellm.devices.kernels import rates_from

    device = devices.find("laptop-x86-16gb")
    model = from_config_dict(_probe_config(Shape()), "probe")
    bw = device.memory.effective_bandwidth
    r = rates_from(model, "Q4_0", prefill_tps=300.0, decode_tps=80.0, bandwidth=bw, source="t")
    measured = dataclasses.replace(device, kernels=(("llama.cpp:Q4_0", r),))
    # a context at which the estimate's decode position is the probe's (128 + 32 / 2 tokens)
    e = estimate(model, measured, BuildChoice("gguf", "Q4_0", "f16"), 208)
    assert e.decode_tps == pytest.approx(80.0, rel=0.01)
    assert e.prefill_tps == pytest.approx(300.0, rel=0.03)
    longer = estimate(model, measured, BuildChoice("gguf", "Q4_0", "f16"), 4096)
    assert longer.decode_tps < e.decode_tps                 # a fuller KV cache to read per token


def test_a_type_measured_faster_is_predicted_faster_and_can_win():
    device = devices.find("laptop-x86-16gb")
    model = from_config_dict(_probe_config(Shape()), "probe")
    fast, slow = KernelRate(0.9, 400.0), KernelRate(0.45, 250.0)
    tuned = dataclasses.replace(device, kernels=(("llama.cpp:Q4_0", fast), ("llama.cpp:Q4_K_M", slow)))
    q40 = estimate(model, tuned, BuildChoice("gguf", "Q4_0", "f16"), 1024)
    q4km = estimate(model, tuned, BuildChoice("gguf", "Q4_K_M", "f16"), 1024)
    assert q40.decode_tps > 1.5 * q4km.decode_tps and q40.prefill_tps > q4km.prefill_tps
    plain = estimate(model, device, BuildChoice("gguf", "Q4_K_M", "f16"), 1024)
    assert plain.decode_tps != q4km.decode_tps          # without [kernels]: the old roofline


def test_a_profile_with_kernels_parses_and_bad_rates_are_named(tmp_path):
    from edgellm.errors import BadInput

    base = (devices.find("rpi5-8gb").source and open(devices.find("rpi5-8gb").source).read())
    good = base + '\n[kernels]\n"llama.cpp:Q4_0" = { decode_bandwidth_share = 0.8, prefill_gflops = 40.0, source = "x" }\n'
    p = tmp_path / "d.toml"
    p.write_text(good)
    d = devices.catalog.load_file(p)
    assert d.kernel("llama.cpp:Q4_0").prefill_gflops == 40.0 and d.kernel("llama.cpp:Q8_0") is None
    p.write_text(base + '\n[kernels]\n"llama.cpp:Q4_0" = { decode_bandwidth_share = -1, prefill_gflops = 40.0 }\n')
    with pytest.raises(BadInput, match="kernels.llama.cpp:Q4_0.decode_bandwidth_share"):
        devices.catalog.load_file(p)


def test_device_measure_kernels_writes_them(run_cli, tmp_path, monkeypatch):
    out = tmp_path / "here.toml"
    r = run_cli("device", "measure", "--kernels", "-o", str(out), timeout=600)
    assert r.returncode == 0, r.stderr
    d = devices.catalog.load_file(out)
    assert {k for k, _ in d.kernels} == {f"llama.cpp:{t}" for t in
                                         ("F16", "Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M", "Q4_0", "IQ4_XS", "Q3_K_M", "Q2_K")}
