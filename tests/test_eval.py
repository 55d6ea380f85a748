"""`edgellm eval` on every kind of target, against a reference, and its bad input."""

import json
import subprocess
import sys


def export(run_cli, model, out, *flags):
    r = run_cli("export", str(model), "--device", "rpi5", "-o", str(out), "--no-verify", *flags)
    assert r.returncode == 0, r.stderr


def evaluate(run_cli, *args):
    r = run_cli("eval", *args, "--context", "128", "--windows", "3", "--json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_quantized_bundles_score_against_the_original(cli, run_cli, tiny, tmp_path):
    folder = tiny("llama")
    export(cli, folder, tmp_path / "f16", "--quant", "F16")
    export(cli, folder, tmp_path / "q4", "--quant", "Q4_K_M")
    export(cli, folder, tmp_path / "int4", "--format", "onnx", "--quant", "int4")
    hf = evaluate(run_cli, str(folder))                 # one as a user runs it, the rest in this process
    assert hf["windows"] == 3 and hf["tokens_scored"] == 3 * 127 and hf["perplexity"] > 1
    f16 = evaluate(cli, str(tmp_path / "f16"), "--reference", str(folder))
    q4 = evaluate(cli, str(tmp_path / "q4"), "--reference", str(folder))
    int4 = evaluate(cli, str(tmp_path / "int4"), "--reference", str(folder))
    assert f16["reference_perplexity"] == hf["perplexity"]
    assert f16["mean_kld"] < 1e-3 and f16["top1_agreement"] > 0.97
    assert f16["mean_kld"] < q4["mean_kld"] and f16["mean_kld"] < int4["mean_kld"]
    assert q4["p99_kld"] >= q4["mean_kld"]


def test_a_bundle_scores_without_torch(cli, run_cli, tiny, tmp_path):
    export(cli, tiny("qwen2"), tmp_path / "b", "--format", "onnx", "--quant", "int8")
    code = ("import sys; from edgellm.cli import main; "
            f"rc = main(['eval', {str(tmp_path / 'b')!r}, '--context', '64', '--windows', '2', '--json']); "
            "assert 'torch' not in sys.modules and 'transformers' not in sys.modules; sys.exit(rc)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["perplexity"] > 1


def test_text_shorter_than_one_window_is_one_clear_line(cli, tiny, tmp_path):
    (tmp_path / "short.txt").write_text("def f(): pass\n")
    r = cli("eval", str(tiny("llama")), "--data", str(tmp_path / "short.txt"))
    assert r.returncode == 2 and "shorter than one window" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    r = cli("eval", str(tiny("llama")), "--data", str(tmp_path / "missing.txt"))
    assert r.returncode == 2 and "no such file" in r.stderr


def test_a_reference_with_another_vocabulary_is_refused(cli, tiny, spm_tokenizer, tmp_path):
    from edgellm.exporters.demo_models import build_model

    other = build_model("llama", tmp_path / "spm", spm_tokenizer)
    r = cli("eval", str(tiny("llama")), "--reference", str(other), "--context", "64")
    assert r.returncode == 2 and "share the target's vocabulary" in r.stderr
    r = cli("eval", str(tiny("llama")), "--reference", str(tiny("llama", pad_vocab=64)), "--context", "64")
    assert r.returncode == 2 and "share the target's vocabulary" in r.stderr
