"""Bad input to `edgellm export`: one clear line, a non-zero exit, and nothing at the output path."""

import json
import shutil
import struct

import pytest

from edgellm.errors import EdgeLLMError


def fails(run_cli, model, out, code=2, *flags):
    r = run_cli("export", str(model), "--device", "rpi5", "-o", str(out), *flags)
    assert r.returncode == code, (r.stdout, r.stderr)
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("edgellm: error:")]
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert not out.exists()
    assert not list(out.parent.glob(f".{out.name}.partial-*"))
    return lines[0]


def copy(tiny, tmp_path, arch="llama", **kw):
    dst = tmp_path / "model"
    shutil.copytree(tiny(arch, **kw), dst)
    return dst


def test_truncated_safetensors(run_cli, tiny, tmp_path):
    m = copy(tiny, tmp_path)
    st = m / "model.safetensors"
    st.write_bytes(st.read_bytes()[:-1000])
    assert "truncated" in fails(run_cli, m, tmp_path / "out")


@pytest.mark.parametrize("mutate,match", [
    (lambda h: h, None),
    (lambda h: {**h, "bad": {"dtype": "F32", "shape": [4], "data_offsets": [0, 8]}}, "do not hold shape"),
    (lambda h: {**h, "bad": {"dtype": "F99", "shape": [1], "data_offsets": [0, 4]}}, "unknown dtype"),
    (lambda h: {**h, "bad": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, "overlap"),
])
def test_malformed_safetensors_headers(run_cli, tiny, tmp_path, mutate, match):
    m = copy(tiny, tmp_path)
    st = m / "model.safetensors"
    blob = st.read_bytes()
    (n,) = struct.unpack("<Q", blob[:8])
    header = mutate(json.loads(blob[8:8 + n]))
    if match is None:                       # header length pointing past the end of the file
        st.write_bytes(struct.pack("<Q", len(blob) * 2) + blob[8:])
        match = "runs past the end"
    else:
        raw = json.dumps(header).encode()
        st.write_bytes(struct.pack("<Q", len(raw)) + raw + blob[8 + n:])
    assert match in fails(run_cli, m, tmp_path / "out")


def test_missing_shard_is_named_before_anything_is_written(run_cli, tiny, tmp_path):
    m = copy(tiny, tmp_path)
    (m / "model.safetensors").rename(m / "model-00001-of-00002.safetensors")
    index = {"weight_map": {"model.embed_tokens.weight": "model-00001-of-00002.safetensors",
                            "lm_head.weight": "model-00002-of-00002.safetensors"}}
    (m / "model.safetensors.index.json").write_text(json.dumps(index))
    assert "missing shard(s): 'model-00002-of-00002.safetensors'" in fails(run_cli, m, tmp_path / "out")


def test_sharded_checkpoint_exports(run_cli, tiny, tmp_path):
    from safetensors.torch import load_file, save_file

    m = copy(tiny, tmp_path)
    tensors = load_file(m / "model.safetensors")
    names = sorted(tensors)
    half = len(names) // 2
    shards = {"model-00001-of-00002.safetensors": names[:half], "model-00002-of-00002.safetensors": names[half:]}
    for shard, keys in shards.items():
        save_file({k: tensors[k].contiguous() for k in keys}, m / shard, metadata={"format": "pt"})
    (m / "model.safetensors").unlink()
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    (m / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {"total_size": total}, "weight_map": {k: s for s, ks in shards.items() for k in ks}}))
    r = run_cli("export", str(m), "--device", "rpi5", "-o", str(tmp_path / "out"), "--quant", "F16")
    assert r.returncode == 0, r.stderr


def test_pickle_is_refused_unless_allowed_then_loaded_safely(run_cli, tiny, tmp_path):
    import torch
    from safetensors.torch import load_file

    m = copy(tiny, tmp_path)
    torch.save(load_file(m / "model.safetensors"), m / "pytorch_model.bin")
    (m / "model.safetensors").unlink()
    assert "--allow-pickle" in fails(run_cli, m, tmp_path / "out")
    r = run_cli("export", str(m), "--device", "rpi5", "-o", str(tmp_path / "out"), "--quant", "F16", "--allow-pickle")
    assert r.returncode == 0, r.stderr


class Exploit:
    def __reduce__(self):
        import os
        return (os.system, ("touch /tmp/edgellm-pwned",))


def test_malicious_pickle_never_runs(run_cli, tiny, tmp_path):
    import os
    import pickle

    m = copy(tiny, tmp_path)
    (m / "model.safetensors").unlink()
    (m / "pytorch_model.bin").write_bytes(pickle.dumps({"x": Exploit()}))
    if os.path.exists("/tmp/edgellm-pwned"):
        os.unlink("/tmp/edgellm-pwned")
    assert "weights_only=True" in fails(run_cli, m, tmp_path / "out", 2, "--allow-pickle")
    assert not os.path.exists("/tmp/edgellm-pwned")


def test_tokenizer_problems(run_cli, tiny, tmp_path):
    m = copy(tiny, tmp_path)
    tj = json.loads((m / "tokenizer.json").read_text())
    tj["pre_tokenizer"] = {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "always"}
    (m / "tokenizer.json").write_text(json.dumps(tj))
    assert "not one llama.cpp implements" in fails(run_cli, m, tmp_path / "out")
    (m / "tokenizer.json").unlink()
    assert "no tokenizer.json" in fails(run_cli, m, tmp_path / "out")
    (m / "tokenizer.model").write_bytes(b"\x0a\xff\xff")
    assert "cannot read it as a SentencePiece model" in fails(run_cli, m, tmp_path / "out")


def test_unsupported_and_non_causal_models(run_cli, tiny, tmp_path):
    m = copy(tiny, tmp_path)
    cfg = json.loads((m / "config.json").read_text())
    (m / "config.json").write_text(json.dumps({**cfg, "architectures": ["LlamaForSequenceClassification"]}))
    assert "not a causal language model" in fails(run_cli, m, tmp_path / "out")
    (m / "config.json").write_text(json.dumps({**cfg, "model_type": "falcon", "architectures": ["FalconForCausalLM"]}))
    assert "architecture 'falcon' is not supported; supported:" in fails(run_cli, m, tmp_path / "out")


def test_existing_output_needs_force_and_only_a_bundle_is_replaced(run_cli, tiny, tmp_path):
    export = ("export", str(tiny("llama")), "--device", "rpi5", "--quant", "Q8_0", "--no-verify")
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep").write_text("mine")
    r = run_cli(*export, "-o", str(out))
    assert r.returncode == 2 and "--force" in r.stderr and (out / "keep").exists()
    r = run_cli(*export, "-o", str(out), "--force")       # a folder of the user's: never deleted
    assert r.returncode == 2 and "is not an edgellm bundle" in r.stderr and (out / "keep").read_text() == "mine"
    bundle = tmp_path / "bundle"
    assert run_cli(*export, "-o", str(bundle)).returncode == 0
    (bundle / "stale").write_text("x")
    r = run_cli(*export, "-o", str(bundle), "--force")     # a bundle: replaced
    assert r.returncode == 0 and not (bundle / "stale").exists() and (bundle / "manifest.json").exists()


def _request(tiny, tmp_path, quant="Q4_K_M"):
    from edgellm import models
    from edgellm.exporters.gguf.export import ExportRequest
    from edgellm.formats.choice import BuildChoice

    folder = tiny("llama")
    return ExportRequest(model_dir=folder, model=models.load_config(str(folder)),
                         choice=BuildChoice("gguf", quant, "f16"), out=tmp_path / "out", device="rpi5-8gb",
                         verify=False, prediction={"file_bytes": 3 << 20})


@pytest.mark.parametrize("failure", [KeyboardInterrupt(), OSError(28, "No space left on device")])
def test_interrupt_or_full_disk_mid_export_leaves_nothing(tiny, tmp_path, monkeypatch, failure):
    from edgellm.exporters.gguf import export as mod
    from edgellm.exporters.gguf import write as gguf_write

    real, calls = gguf_write._encode, []

    def boom(*a, **k):                      # fail after a few tensors are already on disk
        calls.append(1)
        if len(calls) > 5:
            raise failure
        return real(*a, **k)
    monkeypatch.setattr(gguf_write, "_encode", boom)
    with pytest.raises((KeyboardInterrupt, EdgeLLMError)) as e:
        mod.export_gguf(_request(tiny, tmp_path))
    if isinstance(failure, OSError):
        assert "no space left on" in e.value.message and "needs about" in e.value.message
    assert list(tmp_path.iterdir()) == []


def test_a_wrong_conversion_fails_verification(run_cli, tiny, tmp_path, monkeypatch):
    from edgellm.exporters.gguf import export as mod
    from edgellm.models.families.llama import Llama
    from edgellm.exporters.verify.verify import VerificationFailed

    monkeypatch.setattr(Llama, "transform", lambda self, hf, g, data: None)   # forget the rotary permutation
    req = _request(tiny, tmp_path, "F16")
    from dataclasses import replace
    with pytest.raises(VerificationFailed, match="logits for|diverges"):
        mod.export_gguf(replace(req, verify=True, threads=2))
    assert list(tmp_path.iterdir()) == []


def test_ctrl_c_during_export_exits_130_and_leaves_nothing(tiny, tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    out = tmp_path / "out"
    exe = Path(sys.executable).with_name("edgellm")
    # a runner started in the background inherits SIGINT ignored (and Python then keeps it so);
    # give the child a terminal's default, as a user pressing Ctrl-C has
    proc = subprocess.Popen([str(exe), "export", str(tiny("llama")), "--device", "rpi5", "-o", str(out),
                             "--quant", "F16"], stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 60
    while not list(tmp_path.glob(".out.partial-*")) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.02)
    assert proc.poll() is None, "export ended before it could be interrupted"
    os.kill(proc.pid, signal.SIGINT)                       # mid-export: verification loads torch next
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "interrupted" in err
    assert not out.exists() and not list(tmp_path.glob(".out.partial-*"))
