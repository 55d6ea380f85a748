"""`--remote` against a hostile far side (a real sshd on 127.0.0.1; its "edgellm" a script that
answers what an attacker would) and hostile local input: whatever comes back is bounded while it
streams and checked like local input, what is sent is only what the bundle check verified, and
an interrupted or altered copy never stands under its final name.  Each failure: one line on
stderr, no escape sequence in it, exit 2 (or the documented code), quickly."""

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import CORPUS, write_bundle
from sshd_helper import far_home, free_port, start_sshd

PY = sys.executable
ARGS = ("--prompt-tokens", "16", "--gen-tokens", "8", "--repeats", "2")
CACHE = far_home() / ".cache/edgellm/remote"


def _forget(*prefixes: str) -> None:
    """The far side's cached copies of these bundles, and their sums files."""
    for p in [q for prefix in prefixes for q in CACHE.glob(f"{prefix}-*")]:
        shutil.rmtree(p) if p.is_dir() else p.unlink()


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    proc, config, port = start_sshd(tmp_path_factory.mktemp("sshd"))
    yield config
    proc.terminate()
    proc.wait(timeout=10)


def _bundle(folder: Path, **files) -> Path:
    return write_bundle(folder, {"m.gguf": (CORPUS / "valid.gguf").read_bytes(),
                                 "config.json": json.dumps({"model_type": "llama"}).encode(), **files}, "m.gguf",
                        device="rpi5-8gb", prediction={"file_bytes": 31456, "peak_memory_bytes": 50 << 20,
                                                       "prefill_tokens_per_s": 100.0, "decode_tokens_per_s": 50.0,
                                                       "context": 128})


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    yield _bundle(tmp_path_factory.mktemp("hostile") / "hostile")
    _forget("hostile")


@pytest.fixture
def far(tmp_path, sshd):
    """``far(answer, code=0, err="")``: the remote args for a far side whose ``edgellm profile``
    prints ``answer`` (bytes, or a shell command's output) and exits ``code``; every other
    edgellm command (``--version``) is the real one."""
    def make(answer=b"", code=0, err=b"", shell=None, measure=None):
        (tmp_path / "answer").write_bytes(answer)
        (tmp_path / "err").write_bytes(err)
        if measure is not None:
            (tmp_path / "measured.toml").write_bytes(measure)
        script = tmp_path / "far-python"
        script.write_text(f"""#!/bin/sh
case "$*" in
  *" profile "*) {shell or f'cat {tmp_path}/answer; cat {tmp_path}/err >&2'}; exit {code};;
  *" device measure "*) while [ $# -gt 0 ]; do [ "$1" = -o ] && cp {tmp_path}/measured.toml "$2"; shift; done
                        exit 0;;
esac
exec {PY} "$@"
""")
        script.chmod(0o755)
        return ("--remote", "edge-test", "--ssh-config", str(sshd()), "--remote-python", str(script))
    return make


def _one_line(r, code: int, *needles: str):
    assert r.returncode == code, (r.returncode, r.stderr[-2000:])
    lines = [ln for ln in r.stderr.splitlines() if not ln.startswith(("edgellm: copying", "edgellm: profiling",
                                                                      "edgellm: measuring"))]
    assert len(lines) == 1 and r.stderr.endswith("\n"), r.stderr[-2000:]
    assert not any(c in r.stderr for c in ("\x1b", "\x07", "\u202e", "Traceback")), r.stderr[-2000:]
    for n in needles:
        assert n in lines[0], lines[0]


# --- the profile JSON that comes back ----------------------------------------------------------

def _records():
    def rec(kind):
        measured = {"threads": 2, "prompt_tokens": 16, "gen_tokens": 8, "repeats": 2, "load_s": 0.1,
                    "ttft_s": 0.01, "prefill_tps": 100.0, "decode_tps": 50.0, "peak_rss_bytes": 1 << 26,
                    "depth": 0, "samples_prefill_tps": [100.0, 100.0], "samples_decode_tps": [50.0, 50.0]}
        return {"build_commit": "llama-cpp-python 0.3", "cpu_info": "Far CPU", "model_filename": "m.gguf",
                "model_type": "llama F16", "model_size": 31456, "model_n_params": None, "type_k": "f16",
                "type_v": "f16", "backends": "CPU (llama.cpp)", "n_threads": 2, "n_depth": 0,
                "test": "pp16" if kind == "pp" else "tg8", "n_prompt": 16 if kind == "pp" else 0,
                "n_gen": 0 if kind == "pp" else 8, "avg_ts": 100.0, "stddev_ts": 0.0, "samples_ts": [100.0, 100.0],
                "avg_ns": 160000, "injected": "\x1b]0;owned\x07",
                "edgellm": {"bundle": "/far/away", "measured": measured, "predicted": {"evil": 1},
                            "conditions": {"before": {"cpu_model": "Far CPU", "temperatures_c": {"cpu": 41.5},
                                                      "cur_khz": [1000, None]},
                                           "after": {"cpu_model": "Far CPU"},
                                           "joules_per_generated_token": "unavailable"},
                            "sustained": [], "remote": {"host": "evil"}}}
    return [rec("pp"), rec("tg")]


def _set(records, path, value):
    obj = records
    keys = path.split(".")
    for k in keys[:-1]:
        obj = obj[int(k)] if isinstance(obj, list) else obj[k]
    obj[int(keys[-1]) if isinstance(obj, list) else keys[-1]] = value
    return records


def test_a_well_formed_answer_is_taken_with_our_names_and_nothing_else(run_cli, far, bundle):
    r = run_cli("profile", str(bundle), *ARGS, *far(json.dumps(_records()).encode()), "--json", timeout=60)
    assert r.returncode == 0, r.stderr
    recs = json.loads(r.stdout)
    e = recs[1]["edgellm"]
    assert e["bundle"] == str(bundle) and e["remote"]["host"] == "edge-test" and "evil" not in e["predicted"]
    assert "injected" not in recs[0] and e["measured"]["decode_tps"] == 50.0
    text = run_cli("profile", str(bundle), *ARGS, *far(json.dumps(_records()).encode()), timeout=60)
    assert text.returncode == 0 and "Far CPU" in text.stdout, text.stderr


RAW = "@RAW@"
BAD_FIELDS = [
    ("1.edgellm.measured.decode_tps", RAW + "NaN", "records[1].edgellm.measured.decode_tps"),
    ("0.avg_ts", RAW + "Infinity", "records[0].avg_ts"),
    ("0.edgellm.measured.load_s", RAW + "1e999", "records[0].edgellm.measured.load_s"),
    ("1.edgellm.measured.decode_tps", -5.0, "records[1].edgellm.measured.decode_tps"),
    ("0.edgellm.measured.peak_rss_bytes", 1e30, "records[0].edgellm.measured.peak_rss_bytes"),
    ("0.edgellm.measured.threads", "4", "records[0].edgellm.measured.threads"),
    ("0.n_depth", True, "records[0].n_depth"),
    ("0.n_threads", RAW + "9" * 5000, None),
    ("0.cpu_info", "\x1b[2J\x1b]0;owned\x07CPU", "records[0].cpu_info"),
    ("0.cpu_info", "CPU \u202e gnp.exe", "records[0].cpu_info"),
    ("0.cpu_info", "x" * 10000, "records[0].cpu_info"),
    ("0.edgellm.conditions.before.cpu_model", "a\nb", "records[0].edgellm.conditions.before.cpu_model"),
    ("0.edgellm.conditions.before.deep", json.loads("[" * 40 + "]" * 40), "nested too deep"),
    ("0.edgellm.conditions.before.deeper", RAW + "[" * 100000 + "]" * 100000, None),
    ("1.test", "pp16", "records[1].test"),
    ("0.edgellm.measured", None, "records[0].edgellm.measured"),
    ("0.edgellm", "not an object", "records[0].edgellm"),
]


@pytest.mark.parametrize("path,value,named", BAD_FIELDS, ids=[f"{p}={str(v)[:20]!r}" for p, v, _ in BAD_FIELDS])
def test_a_malformed_field_is_exit_2_naming_it(run_cli, far, bundle, path, value, named):
    records = _set(_records(), path, value)
    text = json.dumps(records)
    if isinstance(value, str) and value.startswith(RAW):
        text = text.replace(json.dumps(value), value[len(RAW):])
    t0 = time.monotonic()
    r = run_cli("profile", str(bundle), *ARGS, *far(text.encode()), timeout=60)
    _one_line(r, 2, *([named] if named else []))
    assert time.monotonic() - t0 < 30


@pytest.mark.parametrize("answer", [b"{not json", b"", json.dumps({"a": 1}).encode(),
                                    json.dumps(_records()[:1]).encode(), json.dumps(_records() * 2).encode(),
                                    b"\xff\xfe" + json.dumps(_records()).encode()])
def test_what_is_not_a_profile_is_exit_2(run_cli, far, bundle, answer):
    _one_line(run_cli("profile", str(bundle), *ARGS, *far(answer), timeout=60), 2)


@pytest.mark.parametrize("shell,stream", [("yes", "stdout"), ("yes >&2", "stderr"),
                                          ("head -c 40000000 /dev/zero", "stdout")])
def test_endless_output_is_cut_off_while_it_streams(run_cli, far, bundle, shell, stream):
    t0 = time.monotonic()
    r = run_cli("profile", str(bundle), *ARGS, *far(shell=shell), timeout=120)
    _one_line(r, 2, "sent back more than", stream)
    assert time.monotonic() - t0 < 60


@pytest.mark.parametrize("err", [b"edgellm: error: \x1b]0;pwned\x07\x1b[31mred\x1b[0m \xe2\x80\xae txt.exe\n",
                                 b"bad\r\x1b[1A\x1b[2Kall good\n", b"x" * 500000 + b"\n"])
def test_error_text_from_the_far_side_is_one_printable_line(run_cli, far, bundle, err):
    r = run_cli("profile", str(bundle), *ARGS, *far(err=err, code=1), timeout=60)
    _one_line(r, 1)
    assert len(r.stderr) < 600


# --- a measured device profile -------------------------------------------------------------------

MEASURED = """# {comment}
schema = 1
name = "../../evil"
aliases = ["rpi5", "laptop"]
description = "{description}"
runtimes = ["llama.cpp", "onnxruntime"]
preferred_formats = ["gguf", "onnx"]

[memory]
ram = "8589934592 B"
app_share = {app_share}
bandwidth_measured = "{bandwidth}"
copy_measured = "8.00 GB/s"

[cpu]
name = "Far CPU"
arch = "x86_64"
cores_big = 4
cores_little = 0
isa = ["avx2"]
fp32_measured = "100.0 GFLOPS"
"""
GOOD = {"comment": "measured", "description": "Far CPU, 8 GiB (measured)", "app_share": "0.7",
        "bandwidth": "10.00 GB/s"}


def test_a_measured_profile_takes_our_name_never_the_far_sides(run_cli, far, tmp_path):
    r = run_cli("device", "measure", *far(measure=MEASURED.format(**GOOD).encode()), "--name", "mine", timeout=60)
    assert r.returncode == 0, r.stderr
    user = tmp_path / "user-devices"
    assert sorted(p.name for p in user.iterdir()) == ["mine.toml"]
    assert not list(tmp_path.rglob("evil*")) and not list(CACHE.rglob("evil*"))
    from edgellm import devices
    p = devices.find("mine")
    assert p.name == "mine" and p.aliases == () and p.memory.bandwidth_measured == 10e9
    assert devices.find("rpi5").name == "rpi5-8gb"


@pytest.mark.parametrize("change,named", [
    ({"bandwidth": "1e999 GB/s"}, "memory.bandwidth_measured"),
    ({"app_share": "nan"}, "memory.app_share"),
    ({"app_share": "-1"}, "memory.app_share"),
    ({"description": "\\u001b]0;owned\\u0007"}, "description"),
    ({"description": "x [kernels] y"}, None),               # taken, but cannot inject a table
    ({"comment": "x" * (2 << 20)}, "sent back more than"),
    ({"description": "\xff"}, None),
])
def test_a_malformed_measured_profile_is_exit_2(run_cli, far, tmp_path, change, named):
    text = MEASURED.format(**{**GOOD, **change})
    data = text.encode("latin-1") if "\xff" in text else text.encode()
    r = run_cli("device", "measure", *far(measure=data), "--name", "mine", "--update-profile", "rpi5-8gb",
                timeout=60)
    if change.get("description", "").startswith("x [kernels]"):
        assert r.returncode == 0, r.stderr
        return
    _one_line(r, 2, *([named] if named else []))
    assert not (tmp_path / "user-devices").exists() or not list((tmp_path / "user-devices").iterdir())


# --- what is sent ----------------------------------------------------------------------------------

def _linked(b: Path):
    """config.json a link to a file of the very same bytes (its sha256 would match if followed)."""
    (b / "config.json").rename(b.parent / "config.json")
    (b / "config.json").symlink_to(b.parent / "config.json")


def _fifo_listed(b: Path):
    (b / "config.json").unlink()
    os.mkfifo(b / "config.json")


def _fifo_extra(b: Path):
    os.mkfifo(b / "extra")


def _manifest_link(b: Path):
    (b / "manifest.json").rename(b.parent / "manifest.json")
    (b / "manifest.json").symlink_to(b.parent / "manifest.json")


@pytest.mark.parametrize("spoil", [_linked, _fifo_listed, _fifo_extra, _manifest_link])
def test_a_bundle_with_a_link_or_fifo_is_never_sent(run_cli, tmp_path, spoil):
    """Refused by the bundle check before ssh is started: the far side named here does not exist
    (a closed port), so reaching for it would be exit 4, not 2."""
    b = _bundle(tmp_path / f"spoilt-{spoil.__name__.strip('_')}")
    spoil(b)
    r = run_cli("profile", str(b), *ARGS, "--remote", f"127.0.0.1:{free_port()}", timeout=30)
    _one_line(r, 2)
    assert not list(CACHE.glob(f"{b.name}-*"))


@pytest.mark.parametrize("kind", ["fifo", "zero", "socket", "folder", "big", "zero-link"])
def test_ssh_config_is_a_small_regular_file(run_cli, tmp_path, bundle, kind):
    path = tmp_path / "ssh-config"
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "zero":
        path = Path("/dev/zero")
    elif kind == "zero-link":
        path.symlink_to("/dev/zero")
    elif kind == "socket":
        s = socket.socket(socket.AF_UNIX)
        s.bind(str(path))
    elif kind == "folder":
        path.mkdir()
    else:
        path.write_bytes(b"# padding\n" * (300 << 10))
    t0 = time.monotonic()
    r = run_cli("profile", str(bundle), *ARGS, "--remote", "edge-test", "--ssh-config", str(path), timeout=30)
    _one_line(r, 2, "--ssh-config", str(path))
    assert time.monotonic() - t0 < 20


def test_the_private_copy_of_ssh_config_is_removed_when_the_command_ends(run_cli, tmp_path, bundle):
    """profile runs its work in a supervised child, which ends through os._exit (no atexit): the
    copy of --ssh-config, and its folder, are removed all the same."""
    config, scratch = tmp_path / "ssh-config", tmp_path / "tmp"
    config.write_text(f"Host edge-test\n  HostName 127.0.0.1\n  Port {free_port()}\n")
    scratch.mkdir()
    r = run_cli("profile", str(bundle), *ARGS, "--remote", "edge-test", "--ssh-config", str(config),
                env={"TMPDIR": str(scratch)}, timeout=60)
    assert r.returncode == 4, r.stderr
    assert list(scratch.iterdir()) == []


def test_a_file_swapped_or_cut_after_the_check_is_not_what_is_sent(sshd, tmp_path):
    """What is sent is read through the descriptors the check hashed: a file renamed over a
    checked one is not sent (the checked bytes are); one cut short in place is refused, and
    nothing lands under its name."""
    from edgellm.errors import BadInput
    from edgellm.remote import Remote, push
    from edgellm.runtime.bundle import open_bundle

    remote = Remote.parse("edge-test", PY, str(sshd()))
    b = _bundle(tmp_path / "swapped")
    original = (b / "config.json").read_bytes()
    bundle = open_bundle(b)
    try:
        (tmp_path / "evil.json").write_bytes(b'{"model_type": "evil"}')
        os.replace(tmp_path / "evil.json", b / "config.json")
        where, _ = push(remote, bundle)
        assert (far_home() / where / "config.json").read_bytes() == original
    finally:
        bundle.close()
        _forget("swapped")
    b = _bundle(tmp_path / "cut")
    bundle = open_bundle(b)
    try:
        os.truncate(b / "m.gguf", 100)
        with pytest.raises(BadInput, match="shrank since it was checked"):
            push(remote, bundle)
    finally:
        bundle.close()
    assert not list(CACHE.glob("cut-*/m.gguf"))
    _forget("cut")


def _fake_bin(d: Path, **tools: str) -> str:
    fake = d / "bin"
    fake.mkdir()
    for name, body in tools.items():
        (fake / name).write_text("#!/bin/sh\n" + body)
        (fake / name).chmod(0o755)
    return f"SetEnv PATH={fake}:/usr/local/bin:/usr/bin:/bin\n"


def test_a_copy_the_far_side_cannot_verify_is_never_under_its_final_name(run_cli, tmp_path_factory, tmp_path):
    """The far side's sha256sum disagrees (the bytes were altered on the way): the copy is refused
    and removed; nothing stands under a bundle file's name."""
    d = tmp_path_factory.mktemp("sshd-badsum")
    proc, config, _ = start_sshd(d, _fake_bin(d, sha256sum=f"cat > /dev/null; echo {'0' * 64}  -\n"))
    b = _bundle(tmp_path / "badsum")
    try:
        r = run_cli("profile", str(b), *ARGS, "--remote", "edge-test", "--ssh-config", str(config()),
                    "--remote-python", PY, timeout=60)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    there = [p.name for p in CACHE.glob("badsum-*/*")]
    _forget("badsum")
    _one_line(r, 1, "does not match its sha256")
    assert not {"m.gguf", "config.json", "manifest.json"} & set(there), there


# the far side's cat, slow only where it writes an upload (the shell's start-up files use cat too)
SLOW_UPLOAD = 'case "$(readlink /proc/$$/fd/1)" in *.partial) sleep 4;; esac\nexec /bin/cat "$@"\n'


def test_an_upload_killed_midway_leaves_no_file_under_its_final_name(tmp_path_factory, tmp_path):
    """The far side's cat is slow, edgellm is killed (SIGKILL) while 64 MiB is on its way: ssh then
    ends the far side's input early.  A plain ``cat > NAME.partial && mv`` would rename the
    truncated file into place; the far side's sha256 check keeps it out."""
    d = tmp_path_factory.mktemp("sshd-slow")
    proc, config, _ = start_sshd(d, _fake_bin(d, cat=SLOW_UPLOAD))
    b = _bundle(tmp_path / "killed", **{"weights.bin": os.urandom(64 << 20)})
    try:
        exe = Path(PY).with_name("edgellm")
        cli = subprocess.Popen([str(exe), "profile", str(b), *ARGS, "--remote", "edge-test", "--ssh-config",
                                str(config()), "--remote-python", PY], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, env={**os.environ, "TMPDIR": str(tmp_path)})
        # (SIGKILL leaves no time to remove the private copy of --ssh-config: in tmp_path, not /tmp)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not list(CACHE.glob("killed-*/weights.bin.partial")):
            time.sleep(0.1)
        partial = list(CACHE.glob("killed-*/weights.bin.partial"))
        assert partial, "the copy never started"
        folder = partial[0].parent
        time.sleep(1)
        cli.send_signal(signal.SIGKILL)
        cli.wait(timeout=10)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and list(folder.glob("*.partial")):
            time.sleep(0.2)
        finals = {p.name for p in folder.iterdir() if not p.name.endswith(".partial")}
        assert "weights.bin" not in finals, "renamed into place after an interrupted copy"
        listed = json.loads((b / "manifest.json").read_text())["files"]
        for n in finals - {"manifest.json"}:      # whatever did land is whole
            assert hashlib.sha256((folder / n).read_bytes()).hexdigest() == listed[n]["sha256"], n
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        _forget("killed")
