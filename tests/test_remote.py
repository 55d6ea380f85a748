"""`edgellm profile BUNDLE --remote HOST`: a real sshd on 127.0.0.1 with a key pair made here
(OpenSSH server from the distribution; .ci/run installs it), the system ssh client, and the
failures a user meets (unreachable, refused, no edgellm there)."""

import json
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import CORPUS, write_bundle

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"
PY = sys.executable


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    d = tmp_path_factory.mktemp("sshd")
    for name in ("host", "user", "stranger"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / name)], check=True)
    shutil.copy(d / "user.pub", d / "authorized_keys")
    port = _free_port()
    (d / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {d / 'host'}\nPidFile {d / 'sshd.pid'}\n"
        f"AuthorizedKeysFile {d / 'authorized_keys'}\nStrictModes no\nPasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\nUsePAM no\nPermitRootLogin prohibit-password\n")
    Path("/run/sshd").mkdir(exist_ok=True)
    proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(d / "sshd_config")], stderr=subprocess.PIPE)
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.1)
    else:
        raise RuntimeError(proc.stderr.read().decode())

    def config(key: str = "user") -> Path:
        path = d / f"config-{key}"
        path.write_text(f"Host edge-test\n  HostName 127.0.0.1\n  Port {port}\n  User root\n  IdentityFile {d / key}\n"
                        "  IdentitiesOnly yes\n  StrictHostKeyChecking no\n  UserKnownHostsFile /dev/null\n  LogLevel ERROR\n")
        return path
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
    left = list((Path.home() / ".cache/edgellm/remote").glob("b-*")) if (Path.home() / ".cache/edgellm/remote").exists() else []
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
                "--update-profile", "rpi5-8gb", timeout=300)
    assert r.returncode == 0, r.stderr
    assert "from edge-test" in r.stdout
    from edgellm import devices
    text = Path(devices.find("rpi5-8gb").source).read_text()
    assert "measured on edge-test by edgellm device measure" in text
