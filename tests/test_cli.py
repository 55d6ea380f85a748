"""The `edgellm` command as a user runs it: output, exit codes, and one-line errors."""

import json


QWEN = "Qwen/Qwen2.5-0.5B-Instruct"


def one_line_error(r, code):
    assert r.returncode == code, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("edgellm: error: "), r.stderr
    assert "Traceback" not in r.stderr
    return lines[0]


def test_plan_prints_a_table_with_the_winner(run_cli):
    r = run_cli("plan", QWEN, "--device", "rpi5-8gb")
    assert r.returncode == 0, r.stderr
    assert "chosen: gguf" in r.stdout and "\n*  gguf" in r.stdout
    assert "bundled example" in r.stdout


def test_plan_json_has_the_same_data(run_cli):
    # --max-kld 1: the memory budget is under test, not the default quality budget
    r = run_cli("plan", QWEN, "--device", "rpi5", "--max-memory", "800MB", "--max-kld", "1", "--json")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["winner"]["memory"]["total_bytes"] <= 800e6
    assert data["budgets"]["max_memory_bytes"] == 800_000_000 and data["budgets"]["max_kld"] == 1
    # 9 GGUF types x 2 caches (f16, q8_0) + 5 ONNX builds
    assert len(data["candidates"]) == 23 and sum(c["fits"] for c in data["candidates"]) >= 1


def test_nothing_fits_exits_3_and_says_what_would(run_cli):
    r = run_cli("plan", "meta-llama/Llama-3.1-8B-Instruct", "--device", "rpi5-4gb")
    line = one_line_error(r, 3)
    assert "would fit:" in line
    assert "nothing fits these budgets" in r.stdout


def test_unknown_device_suggests_names(run_cli):
    line = one_line_error(run_cli("plan", QWEN, "--device", "rpi-5"), 2)
    assert "did you mean" in line and "rpi5" in line


def test_bad_models(run_cli, model_dir, tmp_path):
    assert "not supported; supported:" in one_line_error(
        run_cli("plan", str(model_dir({"model_type": "rwkv"})), "-d", "rpi5"), 2)
    broken = model_dir({}, name="broken")
    (broken / "config.json").write_text('{"model_type": ')
    assert "not valid JSON" in one_line_error(run_cli("plan", str(broken), "-d", "rpi5"), 2)
    assert "no such file or folder" in one_line_error(run_cli("plan", "./nowhere", "-d", "rpi5"), 2)
    assert "HF_HUB_OFFLINE" in one_line_error(run_cli("plan", "acme/secret-model", "-d", "rpi5"), 4)


def test_bad_flags(run_cli):
    r = run_cli("plan", QWEN, "-d", "rpi5", "--max-memory", "3 parsecs")
    assert r.returncode == 2 and "expected a size" in r.stderr
    assert "more than rpi5-8gb's" in one_line_error(run_cli("plan", QWEN, "-d", "rpi5", "--max-memory", "64GB"), 2)
    assert "longer than" in one_line_error(run_cli("plan", QWEN, "-d", "rpi5", "--context", "1000000"), 2)


def test_debug_shows_the_traceback(run_cli):
    r = run_cli("--debug", "plan", QWEN, "--device", "nope")
    assert r.returncode == 2 and "Traceback" in r.stderr


def test_devices_list_show_and_json(run_cli):
    r = run_cli("devices")
    assert r.returncode == 0 and "rpi5-8gb" in r.stdout and "npu:qnn" in r.stdout
    data = json.loads(run_cli("devices", "list", "--json").stdout)
    assert len(data) >= 9 and all("memory_budget_bytes" in d for d in data)
    r = run_cli("devices", "show", "rpi5")
    assert r.returncode == 0 and "Cortex-A76" in r.stdout and "17.1 GB/s" in r.stdout
    assert json.loads(run_cli("device", "show", "rpi5", "--json").stdout)["name"] == "rpi5-8gb"
    one_line_error(run_cli("devices", "show", "nope"), 2)


def test_bad_user_profile_is_named(run_cli, tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('schema = 1\nname = "bad"\n')
    line = one_line_error(run_cli("plan", QWEN, "--device", str(bad)), 2)
    assert str(bad) in line and "description" in line


def test_device_measure_writes_a_profile_the_planner_accepts(run_cli, tmp_path):
    out = tmp_path / "here.toml"
    r = run_cli("device", "measure", "--name", "here", "--no-kernels", "--allow-busy", "-o", str(out))
    assert r.returncode == 0, r.stderr
    assert "measuring memory bandwidth" in r.stderr
    r = run_cli("devices", "show", str(out), "--json")
    prof = json.loads(r.stdout)
    assert prof["memory"]["bandwidth_measured"] > 1e8 and prof["cpu"]["fp32_measured"] > 1e8
    assert prof["cpu"]["cores_big"] >= 1
    r = run_cli("plan", QWEN, "--device", str(out), "--min-decode-tps", "1")
    assert r.returncode == 0, r.stderr


def test_measured_profile_goes_to_the_user_folder(run_cli, tmp_path):
    r = run_cli("device", "measure", "--name", "box", "--no-kernels", "--allow-busy")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "user-devices" / "box.toml").is_file()
    assert "box" in run_cli("devices").stdout
    assert not list((tmp_path / "user-devices").glob("*.partial"))


def test_demo_plan_only_runs_offline(run_cli):
    r = run_cli("demo", "--plan-only")
    assert r.returncode == 0, r.stderr
    assert "published models on rpi5-8gb" in r.stdout and "Llama-3.1-70B" in r.stdout


def test_demo_builds_exports_verifies_runs_and_profiles(run_cli, tmp_path):
    """The README's first command.  Its model is the small reference model, trained once for the
    whole suite (as the README's command trains it once per machine) and put in this test's own
    cache: the demo must find it there and not train again."""
    import shutil

    from edgellm.exporters.reference_model import SPECS, reference_model

    seeded = tmp_path / "cache" / "reference" / SPECS["small"].cache_name
    shutil.copytree(reference_model("small"), seeded)
    r = run_cli("demo", "--json", env={"EDGELLM_CACHE": str(tmp_path / "cache")}, timeout=900)
    assert r.returncode == 0, r.stderr
    demo = json.loads(r.stdout)["demo"]
    assert demo["model_dir"] == str(seeded) and not seeded.with_name(seeded.name + ".partial").exists()
    assert demo["verification"]["tokenizer"].startswith("identical")
    assert demo["verification"]["held_out"]["mean_kld"] < 0.01
    assert demo["sample"].startswith("def ") and len(demo["sample"]) > 10
    assert demo["profile"]["decode_tps"] > 0 and demo["profile"]["peak_rss_bytes"] < 300 << 20
    assert (tmp_path / "cache" / "demo" / "bundle-gguf-rpi5-8gb" / "manifest.json").is_file()
    # the same trained model through the ONNX path
    r = run_cli("demo", "--format", "onnx", "--device", "laptop-x86-16gb", "--json",
                env={"EDGELLM_CACHE": str(tmp_path / "cache")}, timeout=900)
    assert r.returncode == 0, r.stderr
    demo = json.loads(r.stdout)["demo"]
    assert demo["plan"]["winner"]["choice"]["format"] == "onnx"
    assert demo["verification"]["runtime"] == "onnxruntime" and demo["verification"]["held_out"]["mean_kld"] < 0.05
    assert demo["sample"].startswith("def ") and demo["profile"]["decode_tps"] > 0


def test_no_command_prints_help(run_cli):
    r = run_cli()
    assert r.returncode == 2 and "exit codes:" in r.stdout


def test_a_memory_budget_set_too_low_says_how_much_would_do(run_cli):
    """--max-memory below every build: the advice names the budget that fits on this device (not
    another device, whose own budget the user's flag would not change), and that budget works."""
    r = run_cli("plan", "HuggingFaceTB/SmolLM2-135M-Instruct", "--device", "rpi5-8gb", "--max-memory", "10MB")
    line = one_line_error(r, 3)
    assert "would fit: a larger memory budget: --max-memory " in line, line
    budget = line.split("--max-memory ")[1].split()[0]
    ok = run_cli("plan", "HuggingFaceTB/SmolLM2-135M-Instruct", "--device", "rpi5-8gb", "--max-memory", budget)
    assert ok.returncode == 0, ok.stderr
