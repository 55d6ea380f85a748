"""Hostile model folders and bundles, and unlucky users: each case of issue 13 as a user meets it.
Every failure is one line on stderr with a documented exit code, nothing outside a folder is read,
and nothing that is not edgellm's is deleted."""

import json
import os
import shutil
import struct
import time

import pytest

from conftest import CORPUS, stalled, write_bundle


def copy_model(tiny, tmp_path, name="model"):
    m = tmp_path / name
    shutil.copytree(tiny("llama"), m)
    return m


def one_line_error(r, code=2):
    assert r.returncode == code, (r.returncode, r.stderr[-800:])
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("edgellm"), r.stderr
    return r.stderr


EXPORT = ("--device", "rpi5", "--quant", "Q8_0", "--no-verify")


# -- 1. shard names stay inside the model folder -----------------------------------------------
@pytest.mark.parametrize("shard", ["../elsewhere/x.safetensors", "/etc/passwd", "sub/../../x.safetensors",
                                   "..", "a\\..\\b.safetensors"])
def test_a_shard_name_outside_the_folder_is_refused_without_reading_it(run_cli, tiny, tmp_path, shard):
    m = copy_model(tiny, tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.copy(m / "model.safetensors", elsewhere / "x.safetensors")      # a file that would convert
    index = {"weight_map": {"model.embed_tokens.weight": "model.safetensors", "lm_head.weight": shard}}
    (m / "model.safetensors.index.json").write_text(json.dumps(index))
    err = one_line_error(run_cli("export", str(m), *EXPORT, "-o", str(tmp_path / "out")))
    assert "is not a plain file name inside the model folder" in err
    assert "root:x" not in err and "/bin/" not in err and "header length" not in err
    assert not (tmp_path / "out").exists()


def test_a_shard_that_links_out_of_the_folder_is_refused(run_cli, tiny, tmp_path):
    m = copy_model(tiny, tmp_path)
    outside = tmp_path / "outside.safetensors"
    (m / "model.safetensors").rename(outside)
    (m / "model.safetensors").symlink_to(outside)
    err = one_line_error(run_cli("export", str(m), *EXPORT, "-o", str(tmp_path / "out")))
    assert "is a link out of the model folder" in err


def test_a_non_safetensors_file_is_refused_without_echoing_its_bytes(run_cli, tiny, tmp_path):
    m = copy_model(tiny, tmp_path)
    (m / "model.safetensors").write_bytes(b"root:x:0:0:root:/root:/bin/bash\n" * 4)
    err = one_line_error(run_cli("export", str(m), *EXPORT, "-o", str(tmp_path / "out")))
    assert "not a valid safetensors file" in err
    assert str(struct.unpack("<Q", b"root:x:0")[0]) not in err and "root:x" not in err


def test_a_link_in_a_hugging_face_cache_snapshot_into_its_blobs_is_accepted(tmp_path):
    from edgellm.core.model_files import inside

    repo = tmp_path / "models--org--name"
    (repo / "blobs").mkdir(parents=True)
    (repo / "blobs" / "abc").write_bytes(b"x")
    snap = repo / "snapshots" / "rev"
    snap.mkdir(parents=True)
    (snap / "model.safetensors").symlink_to(repo / "blobs" / "abc")
    assert inside(snap, snap / "model.safetensors") == snap / "model.safetensors"


# -- 2. --force replaces only a bundle -----------------------------------------------------------
def test_force_never_deletes_a_folder_that_is_not_a_bundle(run_cli, tiny, tmp_path):
    m = copy_model(tiny, tmp_path / "work")
    (tmp_path / "work" / "notes.txt").write_text("mine")
    err = one_line_error(run_cli("export", str(m), *EXPORT, "-o", str(tmp_path / "work"), "--force"))
    assert "is not an edgellm bundle; refusing to replace it" in err
    assert (tmp_path / "work" / "notes.txt").read_text() == "mine" and (m / "config.json").exists()


def test_an_output_that_is_a_link_is_refused(run_cli, tiny, tmp_path):
    target = tmp_path / "real"
    target.mkdir()
    (tmp_path / "link").symlink_to(target)
    err = one_line_error(run_cli("export", str(tiny("llama")), *EXPORT, "-o", str(tmp_path / "link"), "--force"))
    assert "is a link" in err and target.exists()


# -- 4. bounds on what files say ---------------------------------------------------------------
@pytest.mark.parametrize("layers", [20_000, 10 ** 9])
def test_an_absurd_layer_count_is_refused_at_once(run_cli, model_dir, layers):
    cfg = json.loads((CORPUS.parent.parent / "edgellm/models/examples/Qwen--Qwen2.5-0.5B-Instruct.json").read_text())
    m = model_dir({**cfg, "num_hidden_layers": layers})
    t0 = time.monotonic()
    err = one_line_error(run_cli("plan", str(m), "--device", "rpi5"))
    assert time.monotonic() - t0 < 20 and "'num_hidden_layers' is" in err and "512" in err


@pytest.mark.parametrize("key,value,says", [
    ("max_position_embeddings", 10 ** 12, "'max_position_embeddings' is"),
    ("hidden_size", "896", "must be a whole number"),
    ("num_key_value_heads", [2], "must be a whole number"),
    ("rope_theta", "big", "must be a finite number"),
    ("rms_norm_eps", -1, "must be above 0"),
    ("tie_word_embeddings", "yes", "true or false"),
    ("architectures", "Qwen2ForCausalLM", "must be a list"),
    ("rope_scaling", [1], "must be an object"),
    ("original_max_position_embeddings", 0, "edgellm takes 1 to"),        # divided by in long-rope
    ("original_max_position_embeddings", -5, "edgellm takes 1 to"),       # packed unsigned into the GGUF
    ("rope_scaling", {"rope_type": "longrope", "attention_factor": "x"}, "'attention_factor' must be a finite number"),
    ("rope_scaling", {"rope_type": "yarn", "original_max_position_embeddings": 0}, "from 1 to"),
    ("num_experts_per_tok", 2.5, "must be a whole number"),
])
def test_odd_config_fields_are_one_line_and_exit_2(run_cli, model_dir, key, value, says):
    cfg = json.loads((CORPUS.parent.parent / "edgellm/models/examples/Qwen--Qwen2.5-0.5B-Instruct.json").read_text())
    err = one_line_error(run_cli("plan", str(model_dir({**cfg, key: value})), "--device", "rpi5"))
    assert says in err


def test_a_fifo_or_device_as_config_or_manifest_does_not_hang(run_cli, tmp_path):
    m = tmp_path / "m"
    m.mkdir()
    os.mkfifo(m / "config.json")
    err = one_line_error(run_cli("plan", str(m), "--device", "rpi5", timeout=30))
    assert "not a regular file" in err
    b = tmp_path / "b"
    b.mkdir()
    os.mkfifo(b / "manifest.json")
    assert "not a regular file" in one_line_error(run_cli("run", str(b), "-p", "x", timeout=30))
    (b / "manifest.json").unlink()
    (b / "manifest.json").symlink_to("/dev/zero")
    assert "is a link" in one_line_error(run_cli("run", str(b), "-p", "x", timeout=30))


def test_a_huge_manifest_is_refused_before_it_is_read(run_cli, tmp_path):
    b = tmp_path / "b"
    b.mkdir()
    with open(b / "manifest.json", "wb") as f:
        f.truncate(64 << 20)
    assert "more than the" in one_line_error(run_cli("run", str(b), "-p", "x"))


def test_a_template_that_loops_without_output_stops_at_its_deadline():
    from edgellm.errors import BadInput
    from edgellm.runtime.tokenizer import render_chat

    t0 = time.monotonic()
    with pytest.raises(BadInput, match="ran longer than"):
        render_chat("{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}",
                    [{"role": "user", "content": "hi"}])
    assert time.monotonic() - t0 < 15
    with pytest.raises(BadInput, match="built a value of more than"):
        render_chat("{{ 'x' * 10 ** 9 }}", [])


# -- 6. what is checked is what is loaded -------------------------------------------------------
def _gguf_bundle(tmp_path, **extra_files):
    files = {"m.gguf": (CORPUS / "valid.gguf").read_bytes(), **extra_files}
    return write_bundle(tmp_path / "b", files, "m.gguf")


def test_a_file_the_manifest_does_not_list_is_refused(run_cli, tmp_path):
    b = _gguf_bundle(tmp_path)
    (b / "model.onnx.data").write_bytes(b"\0" * 100)
    err = one_line_error(run_cli("run", str(b), "-p", "t1", "--raw"))
    assert "model.onnx.data: a file the manifest does not list" in err


def test_a_listed_file_that_is_a_link_out_is_refused(run_cli, tmp_path):
    b = _gguf_bundle(tmp_path, **{"tokenizer.json": b"{}"})
    secret = tmp_path / "secret.json"
    secret.write_bytes(b"{}")
    (b / "tokenizer.json").unlink()
    (b / "tokenizer.json").symlink_to(secret)
    assert "is a link" in one_line_error(run_cli("run", str(b), "-p", "t1", "--raw"))


def test_a_file_swapped_after_the_check_is_not_the_one_loaded(tmp_path):
    from edgellm.runtime.backend import load_backend
    from edgellm.runtime.bundle import open_bundle
    from edgellm.formats import FORMATS

    b = _gguf_bundle(tmp_path)
    bundle = open_bundle(b)
    evil = tmp_path / "evil.gguf"
    evil.write_bytes(b"GGUF" + b"\xff" * 64)               # would be refused or crash if read
    os.replace(evil, b / "m.gguf")                         # swapped between the check and the load
    model = load_backend(FORMATS["gguf"].backend, bundle.artifact, 64, 1, False)
    assert model.n_vocab == 64
    bundle.close()
    assert not bundle.load_dir.exists()


def test_a_bundle_others_can_write_is_copied_verified_and_loaded_from_the_copy(tmp_path):
    from edgellm.runtime.backend import load_backend
    from edgellm.runtime.bundle import open_bundle
    from edgellm.formats import FORMATS

    b = _gguf_bundle(tmp_path)
    os.chmod(b, 0o777)
    bundle = open_bundle(b)
    assert not (bundle.load_dir / "m.gguf").is_symlink()   # a private copy
    with open(b / "m.gguf", "r+b") as f:                   # changed in place after the check
        f.seek(200)
        f.write(b"\xff" * 64)
    model = load_backend(FORMATS["gguf"].backend, bundle.artifact, 64, 1, False)
    assert model.n_vocab == 64
    bundle.close()


@pytest.mark.parametrize("field,value,says", [
    ("version", 99, "bundle version 99 is not supported"),
    ("version", "1", "is not supported"),
    ("files", [], "lists no files"),
    ("artifact", "other.gguf", "'artifact' is not one of its files"),
    ("choice", "gguf", "no build 'choice' object"),
    ("prediction", [1], "'prediction' is not an object"),
])
def test_malformed_manifest_fields_are_one_line(run_cli, tmp_path, field, value, says):
    b = _gguf_bundle(tmp_path)
    m = json.loads((b / "manifest.json").read_text())
    m[field] = value
    (b / "manifest.json").write_text(json.dumps(m))
    assert says in one_line_error(run_cli("run", str(b), "-p", "t1"))


def test_a_malformed_file_entry_is_one_line(run_cli, tmp_path):
    b = _gguf_bundle(tmp_path)
    m = json.loads((b / "manifest.json").read_text())
    m["files"]["m.gguf"]["bytes"] = "many"
    (b / "manifest.json").write_text(json.dumps(m))
    assert "needs a 64-digit lowercase hex 'sha256' and a 'bytes' count" in one_line_error(run_cli("run", str(b), "-p", "t1"))
    m["files"] = {"../m.gguf": m["files"]["m.gguf"], "m.gguf": m["files"]["m.gguf"]}
    (b / "manifest.json").write_text(json.dumps(m))
    assert "is not a plain name inside the bundle" in one_line_error(run_cli("run", str(b), "-p", "t1"))


# -- 7. one writer per output ------------------------------------------------------------------
def test_a_second_export_to_the_same_output_fails_naming_the_first(tmp_path):
    from edgellm.errors import EdgeLLMError
    from edgellm.core.output import OutputBusy, claimed
    from edgellm.exporters.package import is_bundle

    out = tmp_path / "out"
    with claimed(out, False, is_bundle):
        with pytest.raises(OutputBusy, match=f"another edgellm process \\(PID {os.getpid()}\\) is writing it"):
            with claimed(out, False, is_bundle):
                pass
    with claimed(out, False, is_bundle):                      # released: free again, lock file gone
        pass
    assert not (tmp_path / ".out.lock").exists()
    assert issubclass(OutputBusy, EdgeLLMError)


def test_two_export_commands_at_once(run_cli, tiny, tmp_path):
    import signal

    out = tmp_path / "out"
    # the first is held inside its verification (holding the output's lock) however fast it runs
    first = stalled("[2/3] verifying", ["export", str(tiny("llama")), "--device", "rpi5", "--quant", "Q4_K_M",
                                        "-o", str(out)], cwd=tmp_path)
    for line in first.stderr:
        if "[2/3] verifying" in line:
            break
    assert (tmp_path / ".out.lock").read_text().strip()
    second = run_cli("export", str(tiny("llama")), *EXPORT, "-o", str(out))
    err = one_line_error(second, 1)
    assert f"another edgellm process (PID {first.pid}) is writing it" in err
    first.send_signal(signal.SIGTERM)
    first.communicate(timeout=300)
    assert first.returncode == 143
    assert not out.exists() and not (tmp_path / ".out.lock").exists()


# -- 8. unsupported config features are refused at export --------------------------------------
def test_yarn_rope_scaling_is_refused_by_gguf_export_even_without_verification(run_cli, tiny, tmp_path):
    m = copy_model(tiny, tmp_path)
    cfg = json.loads((m / "config.json").read_text())
    cfg["rope_scaling"] = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 512}
    (m / "config.json").write_text(json.dumps(cfg))
    err = one_line_error(run_cli("export", str(m), *EXPORT, "-o", str(tmp_path / "out")))
    assert "rope scaling 'yarn'" in err and not (tmp_path / "out").exists()


# -- 9. the run command's input ----------------------------------------------------------------
def test_prompt_input_checks(run_cli, tmp_path):
    b = _gguf_bundle(tmp_path)
    assert "not valid UTF-8" in one_line_error(run_cli("run", str(b), "-p", "a\udcffb", "--raw"))
    (tmp_path / "p.txt").write_bytes(b"t1\xff")
    assert "not valid UTF-8" in one_line_error(run_cli("run", str(b), "--prompt-file", str(tmp_path / "p.txt")))
    (tmp_path / "long.txt").write_text("t1 " * 500)
    err = one_line_error(run_cli("run", str(b), "--prompt-file", str(tmp_path / "long.txt"), "--raw"))
    assert "more than fits the context of" in err
    for t in ("nan", "-1", "inf"):
        r = run_cli("run", str(b), "-p", "t1", "--temperature", t)
        assert r.returncode == 2 and r.stderr.count("\n") == 1 and "--temperature" in r.stderr
    (tmp_path / "ok.txt").write_text("t1 t2")
    assert run_cli("run", str(b), "--prompt-file", str(tmp_path / "ok.txt"), "--raw", "--max-tokens", "2").returncode == 0
    import subprocess
    import sys
    exe = os.path.join(os.path.dirname(sys.executable), "edgellm")
    r = subprocess.run([exe, "run", str(b), "-p", "-", "--raw", "--max-tokens", "2"], input=b"t1 t2",
                       capture_output=True, timeout=120)
    assert r.returncode == 0, r.stderr


def test_a_failing_template_is_one_line(run_cli, tmp_path):
    from edgellm.errors import BadInput
    from edgellm.runtime.tokenizer import render_chat

    for t in ("{{ 1 / 0 }}", "{{ messages[0]['content'] + 1 }}", "{% for %}"):
        with pytest.raises(BadInput, match="chat template"):
            render_chat(t, [{"role": "user", "content": "x"}])


def test_an_output_under_a_file_or_on_a_read_only_filesystem_is_one_line(run_cli, tiny, tmp_path, small_fs):
    (tmp_path / "file").write_text("x")
    err = one_line_error(run_cli("export", str(tiny("llama")), *EXPORT, "-o", str(tmp_path / "file" / "b")), 1)
    assert "cannot create" in err
    r = small_fs(["export", str(tiny("llama")), *EXPORT, "-o", "{fs}/b"], size="1m", read_only=True)
    err = one_line_error(r, 1)
    assert "Read-only file system" in err or "cannot write" in err


# -- 10. disk full -----------------------------------------------------------------------------
def test_not_enough_space_is_refused_before_starting(tiny, small_fs):
    r = small_fs(["export", str(tiny("llama")), *EXPORT, "-o", "{fs}/b"], size="1m")
    err = one_line_error(r, 1)
    assert "no space left on" in err and "needs about" in err and "free" in err
