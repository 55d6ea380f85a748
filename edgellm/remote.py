"""Profiling a bundle on another machine through the system's OpenSSH client.

The system ``ssh`` is used (never a Python SSH library), so ``~/.ssh/config``, keys, agents and
jump hosts work as they do for the user.  The bundle is copied into a cache folder on the far
side (``~/.cache/edgellm/remote/NAME-HASH/``), skipping files whose sha256 already matches there;
the far side's own edgellm (the light runtime) profiles it and prints its JSON; it comes back
and is shown beside the plan's prediction.  Every failure is one line: the host unreachable,
authentication refused, no edgellm there, a disk too small, the connection dropped.  Nothing is
left on the far side but the cached bundle (``--clean`` removes that too); an interrupted copy
leaves only ``*.partial`` files, which the next copy replaces.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path

from edgellm.runtime.bundle import sha256_file
from edgellm.errors import BadInput, EdgeLLMError, Unreachable

TARGET = re.compile(r"^(?:(?P<user>[^@\s/]+)@)?(?P<host>[A-Za-z0-9._\-]+|\[[0-9a-fA-F:]+\])(?::(?P<port>\d{1,5}))?$")
SSH_OPTIONS = ["-o", "BatchMode=yes", "-o", "ConnectTimeout=15", "-o", "ServerAliveInterval=10",
               "-o", "ServerAliveCountMax=3"]
EXIT_NO_COMMAND = 127


@dataclass(frozen=True)
class Remote:
    host: str
    user: str | None = None
    port: int | None = None
    python: str | None = None           # --remote-python: run edgellm as PYTHON -m edgellm
    config: str | None = None           # --ssh-config: ssh -F FILE instead of ~/.ssh/config

    @classmethod
    def parse(cls, text: str, python: str | None = None, config: str | None = None) -> "Remote":
        m = TARGET.match(text or "")
        if not m or (m["port"] and not 0 < int(m["port"]) < 65536):
            raise BadInput(f"--remote {text!r}: expected [user@]host[:port]")
        return cls(m["host"].strip("[]"), m["user"], int(m["port"]) if m["port"] else None, python, config)

    @property
    def name(self) -> str:
        return (f"{self.user}@" if self.user else "") + self.host + (f":{self.port}" if self.port else "")

    def ssh(self, command: str, stdin=None, timeout: float | None = None, text: bool = True):
        args = ["ssh", *SSH_OPTIONS] + (["-F", self.config] if self.config else []) \
            + (["-p", str(self.port)] if self.port else []) \
            + ["--", (f"{self.user}@" if self.user else "") + self.host, command]
        try:
            feed = {"stdin": stdin} if hasattr(stdin, "fileno") else {"input": stdin}
            return subprocess.run(args, capture_output=True, text=text, timeout=timeout, **feed)
        except FileNotFoundError:
            raise EdgeLLMError("--remote needs the OpenSSH client (ssh) on this machine") from None
        except subprocess.TimeoutExpired:
            raise Unreachable(f"{self.name}: no answer within {timeout:.0f} s") from None

    def edgellm(self) -> str:
        return f"{shlex.quote(self.python)} -m edgellm" if self.python else "edgellm"

    def fail(self, r, doing: str) -> EdgeLLMError:
        """One line for an ssh command that failed."""
        err = r.stderr if isinstance(r.stderr, str) else r.stderr.decode("utf-8", "replace")
        last = next((ln.strip() for ln in reversed(err.splitlines()) if ln.strip()), "")
        if r.returncode == 255:
            if "Permission denied" in err or "Authentication" in err:
                return Unreachable(f"{self.name}: authentication refused ({last}); check the key or ~/.ssh/config")
            if "closed" in err or "broken pipe" in err.lower() or "Timeout" in err or "reset" in err:
                return Unreachable(f"{self.name}: the connection dropped while {doing} ({last})")
            return Unreachable(f"{self.name}: cannot reach it ({last or 'ssh exited 255'})")
        if last.startswith("edgellm: error: "):
            return EdgeLLMError(f"on {self.name}: {last[len('edgellm: error: '):]}")
        return EdgeLLMError(f"{self.name}: {doing} failed (exit {r.returncode}{': ' + last if last else ''})")


def check_runtime(remote: Remote) -> str:
    r = remote.ssh(f"{remote.edgellm()} --version", timeout=60)
    if r.returncode == 0 and r.stdout.startswith("edgellm"):
        return r.stdout.strip()
    if r.returncode == 255:
        raise remote.fail(r, "connecting")
    where = f"with {remote.python}" if remote.python else "on its PATH"
    raise EdgeLLMError(f"{remote.name}: no edgellm {where}; install the light runtime there "
                       "(pip install edgellm), or pass --remote-python PATH to the Python that has it")


def remote_dir(bundle_folder: Path, manifest_sha: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", bundle_folder.resolve().name)[:60] or "bundle"
    return f".cache/edgellm/remote/{safe}-{manifest_sha[:12]}"


def push(remote: Remote, bundle, say=lambda s: None) -> tuple[str, int]:
    """Copy the checked bundle to the far side; (its folder there, bytes sent)."""
    from edgellm.runtime.bundle import MANIFEST

    src = bundle.load_dir or bundle.folder
    files = dict(bundle.manifest["files"])
    manifest_path = bundle.folder / MANIFEST
    files[MANIFEST] = {"sha256": sha256_file(manifest_path), "bytes": manifest_path.stat().st_size}
    where = remote_dir(bundle.folder, files[MANIFEST]["sha256"])
    q = shlex.quote(where)
    listing = remote.ssh(f"mkdir -p {q} && cd {q} && (sha256sum -- * 2>/dev/null || true) && df -Pk .", timeout=120)
    if listing.returncode != 0:
        raise remote.fail(listing, "preparing the bundle folder")
    have, free = {}, None
    for line in listing.stdout.splitlines():
        parts = line.split()
        if len(parts) == 2 and re.fullmatch(r"[0-9a-f]{64}", parts[0]):
            have[parts[1]] = parts[0]
        elif len(parts) >= 4 and parts[3].isdigit():
            free = int(parts[3]) * 1024
    todo = [n for n, meta in files.items() if have.get(n) != meta["sha256"]]
    needed = sum(files[n]["bytes"] for n in todo)
    if free is not None and needed > free:
        from edgellm.units import fmt_bytes
        raise EdgeLLMError(f"{remote.name}: the disk there is too small for the bundle: needs "
                           f"{fmt_bytes(needed)}, has {fmt_bytes(free)} in ~/{where}")
    for n in todo:
        say(f"copying {n} ({files[n]['bytes']:,} bytes) to {remote.name}")
        path = manifest_path if n == MANIFEST else src / n
        with open(path, "rb") as f:
            qn = shlex.quote(n)
            r = remote.ssh(f"cd {q} && cat > {qn}.partial && mv -f {qn}.partial {qn}", stdin=f, text=False)
        if r.returncode != 0:
            raise remote.fail(r, f"copying {n}")
    return where, needed


def profile_remote(remote: Remote, bundle, args: list[str], clean: bool, say=lambda s: None) -> tuple[list, int]:
    """Profile ``bundle`` on ``remote`` with edgellm's ``profile`` ``args``; (its JSON records, bytes sent)."""
    check_runtime(remote)
    where, sent = push(remote, bundle, say)
    say(f"profiling on {remote.name}")
    try:
        r = remote.ssh(f"cd && {remote.edgellm()} profile {shlex.quote(where)} --json "
                       + " ".join(shlex.quote(a) for a in args))
        if r.returncode != 0:
            raise remote.fail(r, "profiling")
        try:
            records = json.loads(r.stdout)
        except ValueError:
            raise EdgeLLMError(f"{remote.name}: its edgellm printed no profile JSON; is it an older version?") from None
    finally:
        if clean:
            remote.ssh(f"rm -rf -- {shlex.quote(where)}", timeout=60)
    return records, sent
