"""`edgellm verify BUNDLE`: the manifest against its JSON Schema, every checksum, then a load and a
few generated tokens; every way the schema forbids is named."""

import copy
import json
import shutil

import pytest

from edgellm.runtime.schema import SchemaError, schema, validate


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, tiny):
    import subprocess
    import sys
    from pathlib import Path

    out = tmp_path_factory.mktemp("verify") / "b"
    exe = Path(sys.executable).with_name("edgellm")
    r = subprocess.run([str(exe), "export", str(tiny("llama")), "--device", "rpi5", "--quant", "Q8_0",
                        "--no-verify", "-o", str(out)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return out


def test_a_sound_bundle_verifies_in_one_line(run_cli, bundle):
    r = run_cli("verify", str(bundle))
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("\n") == 1 and "ok: manifest v1 matches its schema" in r.stdout and "loads in llama.cpp" in r.stdout
    j = json.loads(run_cli("verify", str(bundle), "--json").stdout)
    assert j["ok"] is True and j["files"] == len(json.loads((bundle / "manifest.json").read_text())["files"])


def test_every_exported_manifest_matches_the_schema(bundle):
    validate(json.loads((bundle / "manifest.json").read_text()), schema(1))


def _broken(tmp_path, bundle, change):
    b = tmp_path / "b"
    shutil.copytree(bundle, b)
    m = json.loads((b / "manifest.json").read_text())
    change(m)
    (b / "manifest.json").write_text(json.dumps(m))
    return b


def _set(path, value):
    def change(m):
        *parents, last = path
        for p in parents:
            m = m[p]
        if value is KeyError:
            del m[last]
        else:
            m[last] = value
    return change


FORBIDDEN = [
    (("format",), "zip", "not an edgellm bundle manifest"),
    (("version",), 2, "bundle version 2 is not supported (this edgellm reads version 1)"),
    (("artifact",), KeyError, "'artifact' is not one of its files"),
    (("choice", "format"), "tflite", "$.choice.format: must be one of"),
    (("choice", "surprise"), 1, "$.choice.surprise: is not a field this version has"),
    (("choice", "calibrated"), "yes", "$.choice.calibrated: must be boolean"),
    (("choice", "block_size"), 0, "$.choice.block_size: must be at least 1"),
    (("model", "parameters"), "many", "$.model.parameters: must be integer"),
    (("tools", "gguf"), 17, "$.tools.gguf: must be string"),
    (("tensor_types", "Q8_0"), -1, "$.tensor_types.Q8_0: must be at least 0"),
    (("device",), ["rpi5"], "$.device: must be string"),
]


@pytest.mark.parametrize("path,value,says", FORBIDDEN, ids=lambda v: ".".join(v) if isinstance(v, tuple) else None)
def test_verify_names_each_way_the_schema_forbids(run_cli, tmp_path, bundle, path, value, says):
    b = _broken(tmp_path, bundle, _set(path, value))
    r = run_cli("verify", str(b))
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert says in r.stderr


def test_file_entries_the_schema_forbids(run_cli, tmp_path, bundle):
    m = json.loads((bundle / "manifest.json").read_text())
    name = m["artifact"]
    for change, says in [
        (lambda m: m["files"][name].update(sha256="ABC"), "needs a 64-digit lowercase hex 'sha256'"),
        (lambda m: m["files"][name].update(bytes=-1), "'bytes' count"),
        (lambda m: m["files"][name].update(mode=7), f"$.files[{name!r}].mode: is not a field this version has"),
        (lambda m: m["files"].update({"a/b": m["files"][name]}), "is not a plain name inside the bundle"),
        (lambda m: m.update(files={}), "lists no files"),
    ]:
        b = _broken(tmp_path, bundle, change)
        r = run_cli("verify", str(b))
        assert r.returncode == 2 and says in r.stderr, (says, r.stderr)
        shutil.rmtree(b)


def test_verify_names_a_changed_unlisted_or_truncated_file(run_cli, tmp_path, bundle):
    m = json.loads((bundle / "manifest.json").read_text())
    for damage, says in [(lambda b: (b / "tokenizer.json").write_text("{}"), "tokenizer.json: "),
                         (lambda b: (b / "notes.txt").write_text("x"), "notes.txt: a file the manifest does not list"),
                         (lambda b: open(b / m["artifact"], "r+b").truncate(100), f"{m['artifact']}: 100 bytes")]:
        b = tmp_path / "b"
        shutil.copytree(bundle, b)
        damage(b)
        r = run_cli("verify", str(b), "--json")
        assert r.returncode == 2 and says in r.stderr, r.stderr
        assert json.loads(r.stdout)["ok"] is False
        shutil.rmtree(b)


def test_the_validator_follows_the_schema():
    s = schema(1)
    good = {"format": "edgellm-bundle", "version": 1, "artifact": "m.gguf", "choice": {"format": "gguf", "quant": "F16"},
            "files": {"m.gguf": {"sha256": "0" * 64, "bytes": 1}}}
    validate(good, s)
    for path, value in [(("files",), {"..": {"sha256": "0" * 64, "bytes": 1}}), (("choice",), {"format": "gguf"}),
                        (("files",), {"manifest.json": {"sha256": "0" * 64, "bytes": 1}})]:
        bad = copy.deepcopy(good)
        _set(path, value)(bad)
        with pytest.raises(SchemaError):
            validate(bad, s)
