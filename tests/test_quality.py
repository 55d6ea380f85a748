"""The trained reference model, calibrated quantization, and quality gates, as a user runs them."""

import json

import pytest


@pytest.fixture(scope="session")
def reference():
    """edgellm's small reference model, trained here once (the demo trains the same one; cached)."""
    from edgellm.exporters.reference_model import reference_model
    return reference_model("small")


def export(run_cli, model, out, *flags, ok=True):
    r = run_cli("export", str(model), "--device", "rpi5", "-o", str(out), "--json", *flags, timeout=900)
    if ok:
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)
    return r


def test_the_reference_model_has_learned_the_held_out_text(reference, tmp_path):
    from edgellm.exporters.verify.evaluate import evaluate, open_target
    from edgellm.exporters.demo_models import build_model
    from edgellm.exporters.reference_model import SPECS
    from edgellm.textdata import held_out_files, held_out_text, training_files
    from transformers import AutoTokenizer

    assert not set(held_out_files()) & set(training_files())
    spec = SPECS["small"]
    untrained = build_model("llama", tmp_path / "untrained", AutoTokenizer.from_pretrained(reference),
                            hidden_size=spec.hidden, num_hidden_layers=spec.layers,
                            intermediate_size=spec.intermediate, num_key_value_heads=spec.kv_heads)
    text = held_out_text()
    trained = evaluate(open_target(str(reference), 256), text, 256, 4)
    random = evaluate(open_target(str(untrained), 256), text, 256, 4)
    assert trained.perplexity < 0.25 * random.perplexity and trained.perplexity < 200


def test_the_second_reference_text_is_split_once_and_the_docs_model_learns_it(tmp_path):
    # the docs model itself is a benchmark's (minutes to train); its text, tokenizer and shape here
    from edgellm.exporters.reference_model import SPECS, corpus_ids, corpus_of, tokenizer_for, untrained
    from edgellm.textdata import corpus_text, docs_split

    train, held = docs_split()
    assert len(held) >= 48 << 10 and len(train) > 5 * len(held)
    assert held[:2000] not in train and corpus_text("docs", "held_out") == held
    with pytest.raises(ValueError, match="corpus"):
        corpus_text("poetry", "training")
    spec = SPECS["docs"]
    tok = tokenizer_for(spec)
    assert len(tok) == spec.vocab and len(train) / len(corpus_ids(tok, spec)) > 3     # prose: long tokens
    folder = untrained(spec, tmp_path / "docs", tok)
    config = json.loads((folder / "config.json").read_text())
    assert config["hidden_size"] == 384 and config["tie_word_embeddings"] is False
    assert corpus_of(folder) == "source"            # untrained: no reference record yet


def test_calibrated_gguf_keeps_the_size_and_loses_less(cli, run_cli, reference, tmp_path):
    plain = export(cli, reference, tmp_path / "plain", "--quant", "Q3_K_M")
    cal = export(cli, reference, tmp_path / "cal", "--quant", "Q3_K_M", "--calibrate")
    assert cal["choice"]["calibrated"] and not plain["choice"]["calibrated"]
    assert 0.98 * plain["file_bytes"] <= cal["file_bytes"] <= plain["file_bytes"]
    assert cal["verification"]["held_out"]["mean_kld"] < 0.9 * plain["verification"]["held_out"]["mean_kld"]
    manifest = json.loads((tmp_path / "cal" / "manifest.json").read_text())
    c = manifest["calibration"]
    assert c["tokens"] > 0 and c["mix"]["bytes"] <= c["mix"]["budget_bytes"]
    assert c["mix"]["predicted_kld"] < c["mix"]["recipe_predicted_kld"]
    # where the time went, the writer's share included
    assert {"forward (importance)", "head (importance, loss)", "backward (Fisher)", "cost table", "types chosen",
            "XᵀX", "GPTQ", "ggml quantize"} <= set(c["seconds"]), c["seconds"]
    assert all(s >= 0 for s in c["seconds"].values()) and c["hessian_tokens"] > 0
    run = run_cli("run", str(tmp_path / "cal"), "--raw", "-p", "def ", "--max-tokens", "8")
    assert run.returncode == 0, run.stderr


def test_calibrated_onnx_int4_loses_less_than_round_to_nearest(cli, run_cli, reference, tmp_path):
    flags = ("--format", "onnx", "--quant", "int4", "--block-size", "32")
    rtn = export(cli, reference, tmp_path / "rtn", *flags)
    gptq = export(cli, reference, tmp_path / "gptq", *flags, "--calibrate")
    assert gptq["file_bytes"] == rtn["file_bytes"]
    assert gptq["verification"]["held_out"]["mean_kld"] < rtn["verification"]["held_out"]["mean_kld"]
    assert json.loads((tmp_path / "gptq" / "manifest.json").read_text())["calibration"]["method"].startswith("GPTQ")


def test_a_quality_gate_picks_the_smallest_build_that_measures_within_it(cli, run_cli, reference, tmp_path):
    loose = export(cli, reference, tmp_path / "loose", "--max-kld", "0.5")
    strict = export(cli, reference, tmp_path / "strict", "--max-kld", "0.001")
    for r in (loose, strict):
        passed = [t for t in r["quality_gate"]["trials"] if t["passed"]]
        assert r["verification"]["held_out"]["mean_kld"] <= (0.5 if r is loose else 0.001)
        assert r["file_bytes"] == min(t["file_bytes"] for t in passed)
        assert all(not t["passed"] for t in r["quality_gate"]["trials"] if t["file_bytes"] < r["file_bytes"])
    assert loose["file_bytes"] < strict["file_bytes"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["loose", "strict"]        # trials cleaned up


def test_a_quality_gate_nothing_meets_exits_3_and_leaves_nothing(cli, run_cli, reference, tmp_path):
    r = export(cli, reference, tmp_path / "out", "--quant", "Q2_K", "--max-ppl-increase", "0.01%", ok=False)
    assert r.returncode == 3 and "no build meets perplexity increase" in r.stderr
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("edgellm:")]
    assert len(errors) == 1 and "measured gguf Q2_K: KLD" in errors[0]      # after its progress lines
    assert list(tmp_path.iterdir()) == []


def test_calibration_bad_input_is_one_clear_line(cli, run_cli, reference, tmp_path):
    short = tmp_path / "short.txt"
    short.write_text("def f(x):\n    return x\n")
    foreign = tmp_path / "foreign.txt"
    foreign.write_text("量子化された言語モデルは小さな機械で動く。" * 400)
    cases = [(["--calibrate", "--calib-data", str(short)], "calibration text is"),
             (["--calib-data", str(foreign)], "not in the model's vocabulary"),
             (["--calib-data", str(tmp_path / "missing.txt")], "no such file"),
             (["--quant", "F16", "--calibrate"], "--calibrate applies to"),
             (["--no-verify", "--max-kld", "0.1"], "cannot skip verification")]
    for flags, message in cases:
        r = export(cli, reference, tmp_path / "out", "--quant", "Q4_K_M", *flags, ok=False) \
            if "--quant" not in flags else export(cli, reference, tmp_path / "out", *flags, ok=False)
        assert r.returncode == 2, (flags, r.stderr)
        assert message in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert not (tmp_path / "out").exists()


def test_plan_names_where_its_quality_figures_come_from(run_cli):
    r = run_cli("plan", "Qwen/Qwen2.5-0.5B-Instruct", "--device", "rpi5", "--calibrate", "--json")
    assert r.returncode == 0, r.stderr
    plan = json.loads(r.stdout)
    labels = [c["label"] for c in plan["candidates"]]
    assert "gguf Q4_K_M+cal" in labels and "gguf F16" in labels and "onnx int4/32+cal" in labels
    sources = {c["quality"]["source"] for c in plan["candidates"]}
    assert any("llama.cpp's Llama-3-8B" in s and "qwen2 model cards" in s for s in sources)
    text = run_cli("plan", "Qwen/Qwen2.5-0.5B-Instruct", "--device", "rpi5").stdout
    assert "Quality figures come from" in text and "llama.cpp's Llama-3-8B" in text


def test_calibration_refuses_up_front_when_the_machine_lacks_the_memory(cli, run_cli, reference, tmp_path,
                                                                       monkeypatch):
    import dataclasses

    from edgellm.runtime import hostinfo

    # a machine of 64 MiB (a 405B config over small weights did this before; such a folder is now
    # refused earlier, as weights that do not belong to their config)
    real = hostinfo.probe
    monkeypatch.setattr(hostinfo, "probe", lambda *a, **k: dataclasses.replace(real(*a, **k), ram_bytes=64 << 20))
    big = reference
    r = export(cli, big, tmp_path / "out", "--quant", "Q4_K_M", "--calibrate", ok=False)
    assert r.returncode == 1 and "needs about" in r.stderr and "of RAM" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) <= 2, r.stderr          # (the stage line, the error)
    assert not (tmp_path / "out").exists()


def test_a_calibrated_export_says_what_it_needs_and_records_it(run_cli, reference, tmp_path):
    # its own process: the manifest records the process's peak RSS against the prediction
    out = export(run_cli, reference, tmp_path / "b", "--quant", "Q4_K_M", "--calibrate", "--calib-windows", "2",
                 "--no-verify", ok=False)
    assert out.returncode == 0, out.stderr
    assert "calibration on cpu needs about" in out.stderr and "of temporary disk" in out.stderr
    need = json.loads(out.stdout)["prediction"]["calibration"]
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    cal = manifest["calibration"]
    assert cal["device"] == "cpu" and cal["predicted_need"] == need
    assert 0 < cal["peak_rss_bytes_so_far"] <= need["ram_bytes"]        # the prediction holds here
