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

import dataclasses
import json
import re
import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path

from edgellm.runtime.bundle import sha256_file
from edgellm.errors import BadInput, EdgeLLMError, Unreachable
from edgellm.textfmt import quoted

TARGET = re.compile(r"^(?:(?P<user>[^@\s/]+)@)?(?P<host>[A-Za-z0-9._\-]+|\[[0-9a-fA-F:]+\])(?::(?P<port>\d{1,5}))?$")
SSH_OPTIONS = ["-o", "BatchMode=yes", "-o", "ConnectTimeout=15", "-o", "ServerAliveInterval=10",
               "-o", "ServerAliveCountMax=3"]
EXIT_NO_COMMAND = 127
CACHE = ".cache/edgellm/remote"
SUMS = ".sums"                          # beside a cached bundle: its files' sha256, size and mtime
SECTION = "--edgellm-section--"
SITE = f"{CACHE}/site"                  # where --install unpacks this edgellm on the far side


@dataclass(frozen=True)
class Remote:
    host: str
    user: str | None = None
    port: int | None = None
    python: str | None = None           # --remote-python: run edgellm as PYTHON -m edgellm
    config: str | None = None           # --ssh-config: ssh -F FILE instead of ~/.ssh/config
    site: bool = False                  # run the edgellm that --install put in the far side's cache

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
        if self.site:
            return f'PYTHONPATH="$HOME/{SITE}${{PYTHONPATH:+:$PYTHONPATH}}" {self.interpreter()} -m edgellm'
        return f"{shlex.quote(self.python)} -m edgellm" if self.python else "edgellm"

    def interpreter(self) -> str:
        return shlex.quote(self.python) if self.python else "python3"

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


def check_runtime(remote: Remote) -> Remote:
    """The far side's edgellm: on its PATH (or --remote-python's), else one --install put there;
    the remote to use, or one line saying how to install it."""
    for candidate in (remote, dataclasses.replace(remote, site=True)):
        deps = f"{candidate.interpreter()} -c 'import numpy, llama_cpp' 2>/dev/null && " if candidate.site else ""
        r = candidate.ssh(f"{deps}{candidate.edgellm()} --version", timeout=60)
        if r.returncode == 0 and r.stdout.startswith("edgellm"):
            return candidate
        if r.returncode == 255:
            raise remote.fail(r, "connecting")
    where = f"with {remote.python}" if remote.python else "on its PATH"
    raise EdgeLLMError(f"{remote.name}: no edgellm {where}; install the light runtime there "
                       "(pip install edgellm), pass --remote-python PATH to the Python that has it, "
                       "or --install to push this one")


def local_wheel(say=lambda s: None) -> Path:
    """A wheel of the edgellm running here, built from its source tree (no network: the build
    backend installed here, no dependencies fetched)."""
    import sys
    import tempfile

    import edgellm

    root = Path(edgellm.__file__).resolve().parent.parent
    if not (root / "pyproject.toml").is_file():
        raise BadInput("--install: this edgellm is not installed from a source tree; pass --install WHEEL")
    out = Path(tempfile.mkdtemp(prefix="edgellm-wheel-"))
    say(f"building a wheel of {root}")
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                        "--quiet", "--wheel-dir", str(out), str(root)], capture_output=True, text=True)
    wheels = sorted(out.glob("edgellm-*.whl"))
    if r.returncode != 0 or not wheels:
        last = next((ln for ln in reversed(r.stderr.splitlines()) if ln.strip()), "no wheel written")
        raise EdgeLLMError(f"--install: building the wheel failed ({last.strip()})")
    return wheels[0]


def install(remote: Remote, wheel: Path, say=lambda s: None) -> Remote:
    """Push ``wheel`` and unpack it into the far side's cache (``~/.cache/edgellm/remote/site``,
    no dependencies fetched: numpy and llama-cpp-python must be there already); the remote that
    runs it."""
    say(f"installing {wheel.name} on {remote.name}")
    q, qn = shlex.quote(CACHE), shlex.quote(wheel.name)
    with open(wheel, "rb") as f:
        r = remote.ssh(f"mkdir -p {q} && cd {q} && cat > {qn}.partial && mv -f {qn}.partial {qn} && "
                       f"rm -rf site.new && {remote.interpreter()} -m pip install --quiet --no-deps --no-index "
                       f"--disable-pip-version-check --target site.new {qn} && rm -rf site && mv site.new site "
                       f"&& rm -f {qn}", stdin=f, text=False)
    if r.returncode != 0:
        raise remote.fail(r, "installing edgellm")
    done = dataclasses.replace(remote, site=True)
    deps = done.ssh(f"{done.interpreter()} -c 'import numpy, llama_cpp'", timeout=60)
    if deps.returncode != 0:
        raise EdgeLLMError(f"{remote.name}: edgellm is installed there, but its Python lacks numpy or "
                           "llama-cpp-python; install them there (pip install numpy llama-cpp-python)")
    return check_runtime(done)


def remote_dir(bundle_folder: Path, manifest_sha: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", bundle_folder.resolve().name)[:60] or "bundle"
    return f"{CACHE}/{safe}-{manifest_sha[:12]}"


def push(remote: Remote, bundle, say=lambda s: None) -> tuple[str, int]:
    """Copy the checked bundle to the far side; (its folder there, bytes sent)."""
    from edgellm.runtime.bundle import MANIFEST

    src = bundle.load_dir or bundle.folder
    files = dict(bundle.manifest["files"])
    manifest_path = bundle.folder / MANIFEST
    files[MANIFEST] = {"sha256": sha256_file(manifest_path), "bytes": manifest_path.stat().st_size}
    where = remote_dir(bundle.folder, files[MANIFEST]["sha256"])
    q, qs = shlex.quote(where), shlex.quote(where + SUMS)
    # the sums recorded at the last copy, trusted while a file's size and mtime are unchanged (the
    # far side's edgellm checks every sha256 when it opens the bundle anyway): no re-hashing there
    listing = remote.ssh(f"mkdir -p {q} && (cat {qs} 2>/dev/null || true) && echo {SECTION} && cd {q} && "
                         f"(stat -c '%s %Y %n' -- * 2>/dev/null || true) && echo {SECTION} && df -Pk .", timeout=120)
    if listing.returncode != 0:
        raise remote.fail(listing, "preparing the bundle folder")
    recorded, stats, free = _listing(listing.stdout)
    have = {n: sha for n, (sha, size, mtime) in recorded.items() if stats.get(n) == (size, mtime)}
    todo = [n for n, meta in files.items() if have.get(n) != meta["sha256"]]
    needed = sum(files[n]["bytes"] for n in todo)
    if free is not None and needed > free:
        from edgellm.units import fmt_bytes
        remote.ssh(f"rmdir -- {q} 2>/dev/null", timeout=60)     # the folder made above, if still empty
        raise EdgeLLMError(f"{remote.name}: the disk there is too small for the bundle: needs "
                           f"{fmt_bytes(needed)}, has {fmt_bytes(free)} in ~/{where}")
    for n in todo:
        say(f"copying {n} ({files[n]['bytes']:,} bytes) to {remote.name}")
        path = manifest_path if n == MANIFEST else src / n
        with open(path, "rb") as f:
            qn = shlex.quote(n)
            r = remote.ssh(f"cd {q} && {{ cat > {qn}.partial && mv -f {qn}.partial {qn} || "
                           f"{{ rm -f {qn}.partial; exit 1; }}; }}", stdin=f, text=False)
        if r.returncode != 0:
            raise remote.fail(r, f"copying {n}")
    if todo:
        sums = "".join(f"{meta['sha256']} {n}\n" for n, meta in files.items())
        r = remote.ssh(f"while read -r sha name; do set -- $(stat -c '%s %Y' -- {q}/\"$name\") && "
                       f"echo \"$sha $1 $2 $name\"; done > {qs}.partial && mv -f {qs}.partial {qs}",
                       stdin=sums, timeout=120)
        if r.returncode != 0:
            raise remote.fail(r, "recording the copied files' sums")
    return where, needed


def _listing(text: str):
    """(recorded sha256, size, mtime per name; current size, mtime per name; free bytes)."""
    recorded, stats, free = {}, {}, None
    parts = text.split(SECTION + "\n")
    if len(parts) != 3:
        return recorded, stats, free
    for line in parts[0].splitlines():
        f = line.split(" ", 3)
        if len(f) == 4 and re.fullmatch(r"[0-9a-f]{64}", f[0]) and f[1].isdigit() and f[2].isdigit():
            recorded[f[3]] = (f[0], int(f[1]), int(f[2]))
    for line in parts[1].splitlines():
        f = line.split(" ", 2)
        if len(f) == 3 and f[0].isdigit() and f[1].isdigit():
            stats[f[2]] = (int(f[0]), int(f[1]))
    for line in parts[2].splitlines():
        f = line.split()
        if len(f) >= 4 and f[3].isdigit():
            free = int(f[3]) * 1024
    return recorded, stats, free


def reach(remote: Remote, wheel: Path | None, say=lambda s: None) -> Remote:
    """The far side ready to run edgellm: ``wheel`` (--install) installed there first if given."""
    if wheel is None:
        return check_runtime(remote)
    if not wheel.is_file() or not re.fullmatch(r"edgellm-[A-Za-z0-9_.+-]+\.whl", wheel.name):
        raise BadInput(f"--install {quoted(str(wheel))}: not an edgellm wheel file")
    r = remote.ssh("true", timeout=60)
    if r.returncode != 0:
        raise remote.fail(r, "connecting")
    return install(remote, wheel, say)


def profile_remote(remote: Remote, bundle, args: list[str], clean: bool, say=lambda s: None) -> tuple[list, int]:
    """Profile ``bundle`` on ``remote`` (see :func:`reach`) with edgellm's ``profile`` ``args``;
    (its JSON records, bytes sent)."""
    where, sent = push(remote, bundle, say)
    say(f"profiling on {remote.name}")
    try:
        r = remote.ssh(f"cd && {remote.edgellm()} profile {shlex.quote(where)} --json "
                       + " ".join(shlex.quote(a) for a in args))
        if r.returncode != 0:
            remote.ssh(f"rm -f -- {shlex.quote(where + SUMS)}", timeout=60)    # the next run re-checks every file
            raise remote.fail(r, "profiling")
        try:
            records = json.loads(r.stdout)
        except ValueError:
            raise EdgeLLMError(f"{remote.name}: its edgellm printed no profile JSON; is it an older version?") from None
    finally:
        if clean:
            remote.ssh(f"rm -rf -- {shlex.quote(where)} {shlex.quote(where + SUMS)}", timeout=60)
    return records, sent
