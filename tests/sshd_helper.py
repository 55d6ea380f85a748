"""A real OpenSSH server on 127.0.0.1 with keys made on the spot, for the remote-profiling tests
and benchmarks/remote_overhead.py."""

import os
import pwd
import shutil
import socket
import subprocess
import time
from pathlib import Path

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"


def far_home() -> Path:
    """The home the test sshd logs this user into: the password database's, which is not
    ``$HOME`` when the suite runs with another HOME."""
    return Path(pwd.getpwuid(os.getuid()).pw_dir)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_sshd(d: Path, extra: str = ""):
    """An sshd on 127.0.0.1 with keys made here; ``extra``: more sshd_config lines."""
    for name in ("host", "user", "stranger"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / name)], check=True)
    shutil.copy(d / "user.pub", d / "authorized_keys")
    port = free_port()
    (d / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {d / 'host'}\nPidFile {d / 'sshd.pid'}\n"
        f"AuthorizedKeysFile {d / 'authorized_keys'}\nStrictModes no\nPasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\nUsePAM no\nPermitRootLogin prohibit-password\n" + extra)
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
    return proc, config, port
