"""Every file named on the command line, and every file of a stranger's folder, goes through the
guarded reader: regular files only (a FIFO, a device, a socket, a folder is refused without
reading or waiting), sizes bounded before reading, text checked as UTF-8; malformed or absurd
values in profiles, profile JSON and manifests are one line naming the field, exit 2; a model
card is data, and a hostile one is ignored with one warning while the export goes on."""

import json
import os
import shutil
import socket
import time

import pytest

from conftest import CORPUS, write_bundle

QWEN = "Qwen/Qwen2.5-0.5B-Instruct"              # a bundled example config: no network
PROFILE = (CORPUS.parent.parent / "device_profiles" / "rpi5-8gb.toml").read_text()


def one_line_error(r, code=2):
    assert r.returncode == code, (r.returncode, r.stderr[-800:])
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("edgellm: error: "), r.stderr
    return r.stderr


@pytest.fixture
def hostile(tmp_path):
    """name -> a path that must be refused as a text or data file, and what the refusal says."""
    d = tmp_path / "hostile"
    d.mkdir()
    os.mkfifo(d / "fifo.toml")
    (d / "folder.toml").mkdir()
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(d / "sock.toml"))
    with open(d / "sparse.toml", "wb") as f:
        f.truncate(10 << 30)                     # 10 GB that take no disk
    (d / "latin1.toml").write_bytes("caf\xe9 na\xefve\n".encode("latin-1"))
    (d / "zero.toml").symlink_to("/dev/zero")
    yield {"fifo": (d / "fifo.toml", "not a regular file"), "dev-zero": (d / "zero.toml", "not a regular file"),
           "folder": (d / "folder.toml", "not a regular file"), "socket": (d / "sock.toml", "cannot read it"),
           "sparse": (d / "sparse.toml", "more than"), "not-utf8": (d / "latin1.toml", "UTF-8")}
    sock.close()


@pytest.mark.parametrize("kind", ["fifo", "dev-zero", "folder", "socket", "sparse", "not-utf8"])
def test_every_named_file_is_read_guarded(run_cli, hostile, tmp_path, kind):
    path, says = hostile[kind]
    teacher = tmp_path / "teacher"
    teacher.mkdir()
    commands = [("eval", "no-model", "--data", str(path)),
                ("export", "no-model", "--calib-data", str(path), "-d", "rpi5"),
                ("distill", str(teacher), "--data", str(path), "--size", "0.5", "-o", str(tmp_path / "s")),
                ("run", "no-bundle", "--prompt-file", str(path)),
                ("plan", QWEN, "--device", str(path)),
                ("report", str(path), "-o", str(tmp_path / "r.html"))]
    for args in commands:
        if kind == "folder" and args[0] == "report":
            continue                                         # a folder is a bundle to `report`
        t0 = time.monotonic()
        err = one_line_error(run_cli(*args, timeout=60))
        assert says in err and str(path) in err, (args, err)
        assert time.monotonic() - t0 < 30, args


def test_config_json_linked_out_of_the_model_folder_is_refused(run_cli, tmp_path):
    outside = tmp_path / "outside.json"
    outside.write_text((CORPUS.parent.parent / "edgellm/models/examples/Qwen--Qwen2.5-0.5B-Instruct.json").read_text())
    m = tmp_path / "m"
    m.mkdir()
    (m / "config.json").symlink_to(outside)
    err = one_line_error(run_cli("plan", str(m), "--device", "rpi5"))
    assert "link out of the model folder" in err and "model_type" not in err
    (m / "config.json").unlink()
    (m / "config.json").symlink_to("/dev/zero")
    assert "link out of the model folder" in one_line_error(run_cli("plan", str(m), "--device", "rpi5", timeout=30))


@pytest.mark.parametrize("table,key,value", [
    ("memory", "bandwidth", '"1e309 GB/s"'), ("memory", "bandwidth", "nan"), ("memory", "bandwidth", "-1"),
    ("memory", "bandwidth", '"fast"'), ("memory", "bandwidth", '"1e30 GB/s"'), ("memory", "bandwidth", '"0 GB/s"'),
    ("memory", "bandwidth", "inf"), ("memory", "ram", '"1e400 GiB"'), ("memory", "ram", str(10 ** 40)),
    ("cpu", "fp32_peak", '"1e999 GFLOPS"'), ("cpu", "freq", '"1e30 GHz"'), ("cpu", "cores_big", str(10 ** 30)),
    ("budgets", "min_decode_tps", "1e300"), ("budgets", "context", str(1 << 40)),
])
def test_absurd_profile_values_are_refused_naming_the_field(run_cli, tmp_path, table, key, value):
    lines = PROFILE.splitlines()
    if not any(line.startswith(f"[{table}]") for line in lines):
        lines.append(f"[{table}]")
    at = next(i for i, line in enumerate(lines) if line.startswith(f"[{table}]"))
    lines = [line for line in lines if not line.startswith(f"{key} ")]
    lines.insert(at + 1, f"{key} = {value}")
    p = tmp_path / "odd.toml"
    p.write_text("\n".join(lines) + "\n")
    err = one_line_error(run_cli("plan", QWEN, "--device", str(p)))
    assert f"{table}.{key}" in err, err


@pytest.mark.parametrize("text", ["x = " + "9" * 5000, "x = " + "[" * 5000 + "]" * 5000, "[memory\n"])
def test_malformed_toml_is_one_line(run_cli, tmp_path, text):
    p = tmp_path / "odd.toml"
    p.write_text(PROFILE + "\n" + text + "\n")
    assert "not valid TOML" in one_line_error(run_cli("plan", QWEN, "--device", str(p)))


def _profile_json(**changes):
    rec = {"n_depth": 0, "cpu_info": "cpu", "edgellm": {"bundle": "b", "measured": {"decode_tps": 10.0},
                                                        "predicted": {"decode_tokens_per_s": 12.0},
                                                        "sustained": [{"t_s": 1.0, "decode_tps": 9.0}]}}
    for path, value in changes.items():
        *parents, last = path.split(".")
        at = rec
        for p in parents:
            at = at[p]
        at[last] = value
    return json.dumps([rec])


@pytest.mark.parametrize("path,value", [
    ("edgellm.measured.decode_tps", float("nan")), ("edgellm.measured.decode_tps", "fast"),
    ("edgellm.measured.decode_tps", -1), ("edgellm.measured.decode_tps", float("inf")),
    ("edgellm.predicted.decode_tokens_per_s", 1e30), ("edgellm.measured", [1]), ("n_depth", "deep"),
    ("n_depth", 1.5), ("edgellm.sustained", [{"t_s": 1}]), ("edgellm.bundle", 7), ("edgellm", [1]),
])
def test_malformed_profile_json_for_report_names_the_field(run_cli, tmp_path, path, value):
    p = tmp_path / "p.json"
    p.write_text(_profile_json(**{path: value}))
    err = one_line_error(run_cli("report", str(p), "-o", str(tmp_path / "r.html")))
    assert path.split(".")[-1] in err and "unexpected" not in err, err
    assert not (tmp_path / "r.html").exists()


@pytest.mark.parametrize("raw,says", [
    ('"prediction": {"decode_tokens_per_s": NaN}', "NaN"), ('"prediction": {"file_bytes": 1e999}', "out of range"),
    ('"prediction": {"decode_tokens_per_s": "fast"}', "prediction.decode_tokens_per_s"),
    ('"prediction": {"peak_memory_bytes": -5}', "prediction.peak_memory_bytes"),
    ('"verification": {"held_out": {"mean_kld": "low"}}', "held_out.mean_kld"),
    ('"verification": {"held_out": {"mean_kld": Infinity}}', "Infinity"),
])
def test_malformed_manifest_values_are_one_line(run_cli, tmp_path, raw, says):
    b = write_bundle(tmp_path / "b", {"m.gguf": (CORPUS / "valid.gguf").read_bytes()}, "m.gguf")
    text = (b / "manifest.json").read_text()
    (b / "manifest.json").write_text(text[:-1] + ", " + raw + "}")
    for args in (("report", str(b), "-o", str(tmp_path / "r.html")), ("verify", str(b))):
        err = one_line_error(run_cli(*args))
        assert says in err and "unexpected" not in err, (args, err)


BOMB = "---\nlicense: mit\n" + "a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]\n" for i in range(1, 10)) + "---\n# a card\n"


@pytest.mark.parametrize("card,says", [
    (BOMB, "past 4,096 values"), ("---\nx: " + "[" * 3000 + "]" * 3000 + "\n---\n", "nested deeper"),
    ("---\nx: " + "y" * 100_000 + "\n---\n", "longer than"), ("---\na: 0x" + "f" * 3000 + "\n---\n", "64 bits"),
    ("---\na: &a [*a]\n---\n", "refers to itself"),
])
def test_a_hostile_card_is_ignored_with_one_warning(run_cli, tiny, tmp_path, card, says):
    m = tmp_path / "model"
    shutil.copytree(tiny("llama"), m)
    (m / "README.md").write_text(card)
    t0 = time.monotonic()
    r = run_cli("export", str(m), "--device", "rpi5", "--quant", "Q8_0", "--no-verify", "-o", str(tmp_path / "b"))
    assert r.returncode == 0, r.stderr
    warnings = [line for line in r.stderr.splitlines() if "warning" in line]
    assert len(warnings) == 1 and "model card ignored" in warnings[0] and says in warnings[0], r.stderr
    assert time.monotonic() - t0 < 120


def test_a_card_that_is_a_fifo_or_links_out_is_ignored_with_one_warning(run_cli, tiny, tmp_path):
    m = tmp_path / "model"
    shutil.copytree(tiny("llama"), m)
    os.mkfifo(m / "README.md")
    r = run_cli("export", str(m), "--device", "rpi5", "--quant", "Q8_0", "--no-verify", "-o", str(tmp_path / "b"),
                timeout=120)
    assert r.returncode == 0 and "not a regular file" in r.stderr, r.stderr
    (m / "README.md").unlink()
    (tmp_path / "secret.md").write_text("---\nlicense: secret-value\n---\n")
    (m / "README.md").symlink_to(tmp_path / "secret.md")
    r = run_cli("export", str(m), "--device", "rpi5", "--quant", "Q8_0", "--no-verify", "-o", str(tmp_path / "b"),
                "--force")
    assert r.returncode == 0 and "link out of the model folder" in r.stderr, r.stderr
    assert b"secret-value" not in next((tmp_path / "b").glob("*.gguf")).read_bytes()


def test_data_is_read_only_as_far_as_the_windows_need(tmp_path):
    from edgellm.cli.eval_cmd import read_text

    p = tmp_path / "big.txt"
    p.write_bytes(("é" * 1000 + "\n").encode() * 20_000)        # 40 MB of two-byte characters
    text = read_text(p, tokens=1000)
    assert 16 << 20 <= len(text.encode()) <= (16 << 20) + 1 and text.endswith("é")    # cut at a character
    assert read_text(p) == p.read_text(encoding="utf-8")


def test_tokenizer_files_are_read_guarded(run_cli, spm_tokenizer, tmp_path):
    """gguf's SentencePiece reader opens tokenizer.model and added_tokens.json itself: it gets
    guarded copies; the tokenizer files copied into a bundle are bounded."""
    from edgellm.exporters.demo_models import build_model

    m = build_model("llama", tmp_path / "m", spm_tokenizer)
    shutil.copyfile(spm_tokenizer.name_or_path + "/spm.model", m / "tokenizer.model")
    args = ("export", str(m), "--device", "rpi5", "--quant", "Q8_0", "--no-verify", "-o", str(tmp_path / "b"))
    os.mkfifo(m / "added_tokens.json")
    err = one_line_error(run_cli(*args, timeout=120))
    assert "added_tokens.json" in err and "not a regular file" in err
    (m / "added_tokens.json").unlink()
    (m / "added_tokens.json").symlink_to(tmp_path / "elsewhere.json")
    assert "link out of the model folder" in one_line_error(run_cli(*args, timeout=120))
    (m / "added_tokens.json").unlink()
    with open(m / "special_tokens_map.json", "wb") as f:
        f.truncate(10 << 30)
    r = run_cli(*args, timeout=120)                # stage lines come first: the copy is the last step
    err = r.stderr.splitlines()[-1]
    assert r.returncode == 2 and err.startswith("edgellm: error: ") and "special_tokens_map.json" in err
    assert "more than" in err and not (tmp_path / "b").exists()
