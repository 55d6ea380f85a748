"""`edgellm profile`: conditions recorded (or marked unavailable), context depths, a sustained run,
and llama-bench's JSON field names."""

import json

import pytest

from conftest import CORPUS, write_bundle

LLAMA_BENCH_FIELDS = {"n_prompt", "n_gen", "n_depth", "avg_ts", "stddev_ts", "samples_ts", "model_size",
                      "model_n_params", "type_k", "type_v", "n_threads", "cpu_info", "build_commit"}


@pytest.fixture
def gguf_bundle(tmp_path):
    return write_bundle(tmp_path / "b", {"m.gguf": (CORPUS / "valid.gguf").read_bytes()}, "m.gguf",
                        model={"name": "tiny", "architecture": "llama", "parameters": 12345, "source": "hub"})


def test_json_is_llama_bench_records_with_edgellms_figures(run_cli, gguf_bundle):
    r = run_cli("profile", str(gguf_bundle), "--prompt-tokens", "16", "--gen-tokens", "8", "--repeats", "2",
                "--depths", "0,32", "--json")
    assert r.returncode == 0, r.stderr
    recs = json.loads(r.stdout)
    assert [(x["test"], x["n_depth"]) for x in recs] == [("pp16", 0), ("tg8", 0), ("pp16", 32), ("tg8", 32)]
    for x in recs:
        assert LLAMA_BENCH_FIELDS <= set(x)
        assert len(x["samples_ts"]) == 2 and x["avg_ts"] > 0 and x["model_n_params"] == 12345
        e = x["edgellm"]
        assert e["measured"]["peak_rss_bytes"] > 0 and e["measured"]["ttft_s"] > 0
        cond = e["conditions"]
        for when in ("before", "after"):
            c = cond[when]
            assert c["threads_used"] >= 1 and c["cpu_model"]
            for key in ("governor", "temperatures_c", "throttling"):
                assert c[key] not in (None, "")                     # a value, or "unavailable" with why
        jpt = cond["joules_per_generated_token"]
        assert jpt == "unavailable" or jpt > 0
    assert recs[0]["n_prompt"] == 16 and recs[0]["n_gen"] == 0 and recs[1]["n_gen"] == 8 and recs[1]["n_prompt"] == 0


def test_what_a_machine_does_not_expose_is_unavailable_never_guessed(tmp_path, monkeypatch):
    from edgellm.runtime import conditions

    monkeypatch.setattr(conditions, "CPUFREQ", tmp_path / "none")
    monkeypatch.setattr(conditions, "THERMAL", tmp_path / "none")
    monkeypatch.setattr(conditions, "POWERCAP", tmp_path / "none")
    monkeypatch.setattr(conditions.shutil, "which", lambda name: None)
    s = conditions.snapshot(2)
    assert s["governor"] == "unavailable" and s["temperatures_c"]["value"] == "unavailable"
    assert s["throttling"]["value"] == "unavailable" and conditions.energy_uj() is None
    assert conditions.joules(None, None) == "unavailable"


def test_conditions_are_read_where_the_platform_exposes_them(tmp_path, monkeypatch):
    from edgellm.runtime import conditions

    cpu = tmp_path / "cpu/cpu0/cpufreq"
    cpu.mkdir(parents=True)
    (cpu / "scaling_governor").write_text("performance\n")
    (cpu / "scaling_cur_freq").write_text("2400000\n")
    (cpu / "cpuinfo_max_freq").write_text("2400000\n")
    zone = tmp_path / "thermal/thermal_zone0"
    zone.mkdir(parents=True)
    (zone / "type").write_text("cpu-thermal\n")
    (zone / "temp").write_text("61500\n")
    rapl = tmp_path / "powercap/intel-rapl:0"
    rapl.mkdir(parents=True)
    (rapl / "name").write_text("package-0\n")
    (rapl / "energy_uj").write_text("1000000\n")
    fake_vcgencmd = tmp_path / "vcgencmd"
    fake_vcgencmd.write_text("#!/bin/sh\necho throttled=0x50005\n")
    fake_vcgencmd.chmod(0o755)
    monkeypatch.setattr(conditions, "CPUFREQ", tmp_path / "cpu")
    monkeypatch.setattr(conditions, "THERMAL", tmp_path / "thermal")
    monkeypatch.setattr(conditions, "POWERCAP", tmp_path / "powercap")
    monkeypatch.setenv("PATH", f"{tmp_path}:/usr/bin:/bin")
    s = conditions.snapshot(4)
    assert s["governor"] == "performance" and s["cur_khz"] == [2400000] and s["max_khz"] == [2400000]
    assert s["temperatures_c"] == {"cpu-thermal": 61.5}
    assert s["throttling"]["flags"] == ["under-voltage now", "throttled now", "under-voltage has occurred",
                                        "throttling has occurred"]
    before = conditions.energy_uj()
    (rapl / "energy_uj").write_text("3500000\n")
    assert conditions.joules(before, conditions.energy_uj()) == 2.5


def test_profiles_at_several_depths_and_a_sustained_run_sampled_over_time(run_cli, gguf_bundle):
    r = run_cli("profile", str(gguf_bundle), "--prompt-tokens", "8", "--gen-tokens", "8", "--repeats", "3",
                "--depths", "0,96", "--sustained", "2", "--json")
    assert r.returncode == 0, r.stderr
    recs = json.loads(r.stdout)
    samples = recs[0]["edgellm"]["sustained"]
    assert 1 <= len(samples) <= 4 and all(s["decode_tps"] > 0 for s in samples)
    assert samples[-1]["t_s"] >= 1.5
    text = run_cli("profile", str(gguf_bundle), "--prompt-tokens", "8", "--gen-tokens", "8", "--repeats", "1",
                   "--sustained", "1").stdout
    assert "conditions:" in text and "sustained" in text and "decode at depth" not in text


def test_bad_depths_are_one_line(run_cli, gguf_bundle):
    for d in ("a,b", "-1", ""):
        r = run_cli("profile", str(gguf_bundle), "--depths", d)
        assert r.returncode == 2 and r.stderr.count("\n") == 1
    r = run_cli("profile", str(gguf_bundle), "--depths", "100000")
    assert r.returncode == 2 and "exceed" in r.stderr


def test_a_prompt_longer_than_one_batch_is_fed_in_batches(run_cli, tmp_path):
    """llama.cpp asserts (aborts) on a llama_decode of more than n_batch (512) tokens; a 600-token
    prompt is fed as llama-bench does, one batch at a time."""
    from edgellm.runtime.synthetic_gguf import Shape, write

    gguf = write(tmp_path / "m.gguf", Shape(hidden=64, ffn=256, layers=2, heads=1, kv_heads=1, vocab=512,
                                            context=1024))
    bundle = write_bundle(tmp_path / "b", {"m.gguf": gguf.read_bytes()}, "m.gguf")
    r = run_cli("profile", str(bundle), "--prompt-tokens", "600", "--gen-tokens", "4", "--repeats", "1",
                "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)[0]["n_prompt"] == 600


@pytest.mark.parametrize("kv", ["f16", "q8_0"])
def test_a_bundle_runs_the_kv_cache_its_plan_chose(tmp_path, kv):
    """The plan's memory and speed are for the build's cache type; llama.cpp's own default is f16,
    so a q8_0 build ran with twice the cache the plan counted until the backend was told."""
    from edgellm.runtime.backend import open_backend
    from edgellm.runtime.synthetic_gguf import Shape, write

    gguf = write(tmp_path / "m.gguf", Shape(hidden=64, ffn=64, layers=1, heads=2, kv_heads=1, vocab=300, context=256))
    folder = write_bundle(tmp_path / "b", {"m.gguf": gguf.read_bytes()}, "m.gguf", dict(F16_CHOICE, kv_cache=kv))
    bundle, model = open_backend(folder, n_ctx=64)
    try:
        assert model.kv_cache == kv
        assert model.llm.context_params.type_k == model.llm.context_params.type_v == {"f16": 1, "q8_0": 8}[kv]
        assert model.profile(4, 4, 1).decode_tps > 0                  # it runs with that cache
    finally:
        bundle.close()


def test_heads_a_q8_0_cache_cannot_hold_run_with_f16_and_are_not_planned_so(tmp_path):
    from edgellm.models.families import from_config_dict
    from edgellm.plan.candidates import candidate_choices
    from edgellm import devices
    from edgellm.runtime.backend import open_backend

    folder = write_bundle(tmp_path / "b", {"m.gguf": (CORPUS / "valid.gguf").read_bytes()}, "m.gguf",
                          dict(F16_CHOICE, kv_cache="q8_0"))        # heads of 8, from an older edgellm
    with pytest.warns(UserWarning, match="heads of 8 cannot hold llama.cpp's q8_0 cache"):
        bundle, model = open_backend(folder, n_ctx=64)
    assert model.kv_cache == "f16" and model.profile(4, 4, 1).decode_tps > 0
    bundle.close()
    del model
    cfg = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 96, "intermediate_size": 64,
           "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1, "vocab_size": 300}
    kvs = {str(c.kv_cache) for c in candidate_choices(from_config_dict(cfg, "h48"), devices.find("rpi5-8gb"), ("gguf",))}
    assert kvs == {"f16"}                                               # heads of 48: no q8_0 cache offered
    kvs = {str(c.kv_cache) for c in candidate_choices(from_config_dict(dict(cfg, hidden_size=128), "h64"),
                                                      devices.find("rpi5-8gb"), ("gguf",))}
    assert kvs == {"f16", "q8_0"}


F16_CHOICE = {"version": 2, "format": "gguf", "quant": "F16", "kv_cache": "f16", "block_size": None,
              "calibrated": False, "target": "cpu", "int8_levels": None}
