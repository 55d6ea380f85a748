"""`edgellm profile BUNDLE --remote HOST`: a real sshd on 127.0.0.1 with a key pair made here
(OpenSSH server from the distribution; .ci/run installs it), the system ssh client, and the
failures a user meets (unreachable, refused, no edgellm there)."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import CORPUS, write_bundle
from sshd_helper import far_home, free_port as _free_port, start_sshd as _start_sshd

PY = sys.executable


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    proc, config, port = _start_sshd(tmp_path_factory.mktemp("sshd"))
    yield config, port
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture
def bundle(tmp_path):
    return write_bundle(tmp_path / "b", {"m.gguf": (CORPUS / "valid.gguf").read_bytes(),
                                         "config.json": json.dumps({"model_type": "llama"}).encode()}, "m.gguf",
                        device="rpi5-8gb", prediction={"file_bytes": 31456, "peak_memory_bytes": 50 << 20,
                                                       "prefill_tokens_per_s": 100.0, "decode_tokens_per_s": 50.0,
                                                       "context": 128})


ARGS = ("--prompt-tokens", "16", "--gen-tokens", "8", "--repeats", "2")


def test_profile_on_a_remote_machine_beside_the_plan(run_cli, sshd, bundle):
    config, _ = sshd
    remote = ("--remote", "edge-test", "--ssh-config", str(config()), "--remote-python", PY)
    r = run_cli("profile", str(bundle), *ARGS, *remote, "--json")
    assert r.returncode == 0, r.stderr
    recs = json.loads(r.stdout)
    e = recs[1]["edgellm"]
    assert recs[1]["test"] == "tg8" and recs[1]["avg_ts"] > 0 and e["measured"]["decode_tps"] > 0
    assert e["remote"]["host"] == "edge-test" and e["remote"]["bytes_copied"] > 31456
    assert e["predicted"]["decode_tokens_per_s"] == 50.0 and e["conditions"]["before"]["cpu_model"]
    # a second run copies nothing (every sha256 already matches there), then --clean removes it
    r = run_cli("profile", str(bundle), *ARGS, *remote, "--json", "--clean")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)[0]["edgellm"]["remote"]["bytes_copied"] == 0
    left = list((far_home() / ".cache/edgellm/remote").glob("b-*")) if (far_home() / ".cache/edgellm/remote").exists() else []
    assert left == []
    text = run_cli("profile", str(bundle), *ARGS, *remote, "--clean")
    assert text.returncode == 0 and "on edge-test" in text.stdout and "predicted" in text.stdout


def test_remote_failures_are_one_line(run_cli, sshd, bundle, tmp_path):
    config, port = sshd
    r = run_cli("profile", str(bundle), *ARGS, "--remote", "edge-test", "--ssh-config", str(config("stranger")),
                "--remote-python", PY)
    assert r.returncode == 4 and r.stderr.count("\n") == 1 and "authentication refused" in r.stderr, r.stderr
    r = run_cli("profile", str(bundle), *ARGS, "--remote", f"127.0.0.1:{_free_port()}",
                "--ssh-config", str(config()))
    assert r.returncode == 4 and r.stderr.count("\n") == 1 and "cannot reach it" in r.stderr, r.stderr
    r = run_cli("profile", str(bundle), *ARGS, "--remote", "edge-test", "--ssh-config", str(config()))
    assert r.returncode == 1 and "no edgellm on its PATH; install the light runtime there (pip install edgellm)" in r.stderr
    assert r.stderr.count("\n") == 1
    r = run_cli("profile", str(bundle), "--remote", "bad host!")
    assert r.returncode == 2 and "expected [user@]host[:port]" in r.stderr


def test_measure_a_remote_machine_into_a_profile(run_cli, sshd):
    config, _ = sshd
    r = run_cli("device", "measure", "--remote", "edge-test", "--ssh-config", str(config()), "--remote-python", PY,
                "--update-profile", "rpi5-8gb", "--no-kernels", "--allow-busy", timeout=300)
    assert r.returncode == 0, r.stderr
    assert "from edge-test" in r.stdout
    from edgellm import devices
    text = Path(devices.find("rpi5-8gb").source).read_text()
    assert "measured on edge-test by edgellm device measure" in text


def test_a_remote_disk_too_small_is_refused_before_copying(run_cli, tmp_path_factory, bundle):
    """The far side's df says 12 KiB free: refused with the numbers, nothing copied there."""
    d = tmp_path_factory.mktemp("sshd-small")
    fake = d / "bin"
    fake.mkdir()
    (fake / "df").write_text("#!/bin/sh\necho 'Filesystem 1024-blocks Used Available Capacity Mounted on'\n"
                             "echo 'tmpfs 64 52 12 82% /small'\n")
    (fake / "df").chmod(0o755)
    proc, config, _ = _start_sshd(d, f"SetEnv PATH={fake}:/usr/local/bin:/usr/bin:/bin\n")
    try:
        r = run_cli("profile", str(bundle), *ARGS, "--remote", "edge-test", "--ssh-config", str(config()),
                    "--remote-python", PY)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    assert r.returncode == 1 and r.stderr.count("\n") == 1, r.stderr
    assert "the disk there is too small for the bundle: needs" in r.stderr and "has 12 KiB" in r.stderr
    cache = far_home() / ".cache/edgellm/remote"
    assert not any(p.is_file() for p in cache.glob("b-*/*")), "nothing copied to a disk too small"


def test_a_connection_dropped_mid_run_is_one_line_and_leaves_only_the_cache(run_cli, sshd, bundle, tmp_path):
    """The far side's session dies while profiling (its sshd child killed): one line, exit 4."""
    config, _ = sshd
    script = tmp_path / "python-that-drops"
    script.write_text(f"""#!/bin/sh
case "$*" in *" profile "*)
  pid=$$
  while [ "$pid" -gt 1 ]; do
    pid=$(ps -o ppid= -p "$pid" | tr -d ' ')
    if [ "$(ps -o comm= -p "$pid")" = sshd ]; then kill -9 "$pid"; sleep 5; fi
  done;;
esac
exec {PY} "$@"
""")
    script.chmod(0o755)
    r = run_cli("profile", str(bundle), *ARGS, "--remote", "edge-test", "--ssh-config", str(config()),
                "--remote-python", str(script))
    assert r.returncode == 4 and r.stderr.count("\n") == 1, r.stderr
    assert "the connection dropped while profiling" in r.stderr, r.stderr
    cache = far_home() / ".cache/edgellm/remote"
    left = [p for p in cache.glob("b-*/*")]
    assert left and all(not p.name.endswith(".partial") for p in left)    # the cached bundle, whole
    run_cli("profile", str(bundle), *ARGS, "--remote", "edge-test", "--ssh-config", str(config()),
            "--remote-python", PY, "--clean")
    assert not list(cache.glob("b-*"))


def test_install_pushes_this_edgellm_where_there_is_none(run_cli, sshd, bundle, tmp_path):
    """A far-side Python with numpy and llama-cpp-python but no edgellm: one line saying so, then
    --install builds this edgellm's wheel, unpacks it in the far side's cache and profiles."""
    import sysconfig

    bare = tmp_path / "bare"
    subprocess.run([str(Path(sys.base_prefix) / "bin" / "python3"), "-m", "venv", "--without-pip", str(bare)],
                   check=True)
    site = next(bare.glob("lib/python3*/site-packages"))
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")   # numpy, llama_cpp, pip; no edgellm
    remote = ("--remote", "edge-test", "--ssh-config", str(sshd[0]()), "--remote-python", str(bare / "bin/python"))
    installed = far_home() / ".cache/edgellm/remote/site"
    try:
        r = run_cli("profile", str(bundle), *ARGS, *remote)
        assert r.returncode == 1 and "or --install to push this one" in r.stderr, r.stderr
        r = run_cli("profile", str(bundle), *ARGS, *remote, "--install", "--json", "--clean", timeout=300)
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)[1]["edgellm"]["measured"]["decode_tps"] > 0
        assert (installed / "edgellm" / "remote.py").is_file()
        r = run_cli("profile", str(bundle), *ARGS, *remote, "--clean")      # found again without --install
        assert r.returncode == 0, r.stderr
        bad = run_cli("profile", str(bundle), *ARGS, *remote, "--install", str(tmp_path / "nope.whl"))
        assert bad.returncode == 2 and "not an edgellm wheel file" in bad.stderr
    finally:
        shutil.rmtree(installed, ignore_errors=True)
