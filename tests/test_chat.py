"""Chat, as a user runs it (no --raw) on every backend; chat templates render only in Jinja's
sandbox; model folders saved by transformers 5 and by 4.x both export, verify and chat."""

import json
from pathlib import Path

import pytest

from edgellm.errors import BadInput
from edgellm.core.files import sha256_file
from edgellm.runtime.tokenizer import find_chat_template, render_chat

ESCAPE = "{{ ''.__class__.__mro__[1].__subclasses__() }}"
ESCAPE_ATTR = "{% set x = messages.append({'role': 'x'}) %}{{ x }}"          # mutation: immutable sandbox


def export(run_cli, folder, out, *flags, device="rpi5"):
    r = run_cli("export", str(folder), "--device", device, "-o", str(out), *flags)
    assert r.returncode == 0, r.stderr
    return json.loads((out / "manifest.json").read_text())


def rewrite_file(bundle: Path, name: str, text: str) -> None:
    """Change a bundle file and its manifest entry, as the maker of a hostile bundle would."""
    (bundle / name).write_text(text)
    m = json.loads((bundle / "manifest.json").read_text())
    m["files"][name] = {"sha256": sha256_file(bundle / name), "bytes": (bundle / name).stat().st_size}
    (bundle / "manifest.json").write_text(json.dumps(m))


@pytest.mark.parametrize("flags", [("--format", "onnx", "--quant", "int4"), ("--quant", "Q8_0")],
                         ids=["onnx", "gguf"])
def test_chat_is_the_default_and_works(cli, run_cli, tiny, tmp_path, flags):
    m = export(cli, tiny("qwen2"), tmp_path / "b", *flags)
    assert m["verification"]["chat_template"] == "identical prompt ids"     # ours == transformers'
    r = run_cli("run", str(tmp_path / "b"), "-p", "hello", "--max-tokens", "8")
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""


def test_npu_bundle_chats(cli, run_cli, tiny, tmp_path):
    export(cli, tiny("llama"), tmp_path / "b", "--format", "onnx", "--quant", "int8", "--no-verify",
           device="android-sd8gen3-12gb")
    r = run_cli("run", str(tmp_path / "b"), "-p", "hello", "--max-tokens", "4")
    assert r.returncode == 0, r.stderr


def test_sandbox_refuses_escapes():
    for t in (ESCAPE, ESCAPE_ATTR):
        with pytest.raises(BadInput, match="chat template"):
            render_chat(t, [{"role": "user", "content": "hi"}])
    assert render_chat("{{ messages[0]['content'] | tojson }}", [{"role": "user", "content": "é"}]) == '"é"'
    with pytest.raises(BadInput, match="failed: nope"):
        render_chat("{{ raise_exception('nope') }}", [])


def test_sandbox_bounds_output_and_time():
    with pytest.raises(BadInput, match="refused"):
        render_chat("{% for a in range(100000) %}{% for b in range(100000) %}xxxxxxxxxx{% endfor %}{% endfor %}", [])


def test_hostile_template_in_an_onnx_bundle_is_one_line(cli, run_cli, tiny, tmp_path):
    export(cli, tiny("qwen2"), tmp_path / "b", "--format", "onnx", "--quant", "int4", "--no-verify")
    rewrite_file(tmp_path / "b", "chat_template.jinja", ESCAPE)
    r = run_cli("run", str(tmp_path / "b"), "-p", "hello", "--max-tokens", "4")
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and "sandbox" in r.stderr and "Traceback" not in r.stderr


def test_hostile_template_in_a_model_folder_fails_export_and_gguf_run(cli, run_cli, tiny, tmp_path):
    import shutil

    folder = tmp_path / "m"
    shutil.copytree(tiny("llama"), folder)
    (folder / "chat_template.jinja").write_text(ESCAPE)
    r = run_cli("export", str(folder), "--device", "rpi5", "--quant", "Q8_0", "-o", str(tmp_path / "v"))
    assert r.returncode == 2 and "sandbox" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "v").exists()
    export(cli, folder, tmp_path / "b", "--quant", "Q8_0", "--no-verify")    # the template is in the GGUF
    r = run_cli("run", str(tmp_path / "b"), "-p", "hello", "--max-tokens", "4")
    assert r.returncode == 2 and "sandbox" in r.stderr and r.stderr.count("\n") == 1
    assert run_cli("run", str(tmp_path / "b"), "-p", "hello", "--max-tokens", "4", "--raw").returncode == 0


def test_folders_saved_by_transformers_5_and_4_both_export_verify_and_chat(cli, run_cli, tiny, tmp_path):
    import shutil

    from edgellm.exporters.demo_models import as_saved_by_transformers4

    new = tiny("llama")
    cfg = json.loads((new / "tokenizer_config.json").read_text())
    assert cfg["tokenizer_class"] == "TokenizersBackend" and (new / "chat_template.jinja").is_file()
    old = as_saved_by_transformers4(shutil.copytree(new, tmp_path / "old"))
    assert not (old / "chat_template.jinja").exists()
    assert find_chat_template(old) == find_chat_template(new) is not None
    for name, folder in (("new", new), ("old", old)):
        for flags in (("--format", "onnx", "--quant", "fp32"), ("--quant", "F16")):
            out = tmp_path / f"{name}-{flags[-1]}"
            m = export(cli, folder, out, *flags)
            assert m["verification"]["chat_template"] == "identical prompt ids"
            r = run_cli("run", str(out), "-p", "hello", "--max-tokens", "4")
            assert r.returncode == 0, r.stderr
