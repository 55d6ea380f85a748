"""Profiling a bundle on another machine through the system's OpenSSH client.

The system ``ssh`` is used (never a Python SSH library), so ``~/.ssh/config``, keys, agents and
jump hosts work as they do for the user.  The bundle is copied into a cache folder on the far
side (``~/.cache/edgellm/remote/NAME-HASH/``), skipping files whose sha256 already matches there;
the far side's own edgellm (the light runtime) profiles it and prints its JSON; it comes back
and is shown beside the plan's prediction.  Every failure is one line: the host unreachable,
authentication refused, no edgellm there, a disk too small, the connection dropped.  Nothing is
left on the far side but the cached bundle (``--clean`` removes that too).

The far side is another machine, so what crosses is handled as a stranger's input both ways:

- what is sent is exactly what ``open_bundle`` verified: read through the descriptors it opened
  and hashed (regular files only; a file swapped after the check is not the one sent).  Each file
  lands as ``NAME.partial`` and is renamed only after the far side has checked its sha256, so an
  interrupted or altered copy never stands under its final name;
- whatever comes back (stdout and stderr) is bounded while it streams (ssh is killed past the
  bound), JSON is parsed without NaN or infinities and checked field by field (BadInput naming
  the field), and error text is cut to one printable line (no terminal escape sequences);
- ``--ssh-config FILE`` is read once, bounded, as a regular file, into a private copy ssh uses.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
import selectors
import shlex
import stat
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

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
SMALL = 1 << 20                         # bound on an answer that is a few lines (listings, versions)
MAX_PROFILE = 32 << 20                  # profile JSON: --sustained repeats a sample a second per record
MAX_STDERR = 1 << 20                    # the far side's progress lines and errors
MAX_SSH_CONFIG = 1 << 20
MAX_WHEEL = 1 << 30
MAX_TEXT = 300                          # a string field coming back, or error text shown
_ESCAPES = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)?|[@-Z\\-_])|\x9b[0-?]*[ -/]*[@-~]")


MAX_WORK_S = 3600                       # a far side that keeps the connection alive but never answers


def printable(text: str, limit: int = MAX_TEXT) -> str:
    """The far side's text fit to show on one line: escape sequences dropped, other control and
    format characters (newlines, bidi overrides) shown as '?', cut at ``limit``."""
    text = "".join(c if c.isprintable() else "?" for c in _ESCAPES.sub("", text))
    return text if len(text) <= limit else text[:limit] + "..."


def _private_config(path: str) -> str:
    """``--ssh-config FILE`` read once (a regular file, bounded, never blocking on a FIFO or a
    device) into a file only we can change, which ssh then reads: a swap after the check or a
    FIFO ssh would wait on forever cannot happen."""
    from edgellm.core.files import private_dir, read_small_bytes

    try:
        data = read_small_bytes(Path(path), MAX_SSH_CONFIG)
    except BadInput as e:
        raise BadInput(f"--ssh-config {e.message}") from None
    d = private_dir("edgellm-ssh-")
    copy = os.path.join(d, "config")
    fd = os.open(copy, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return copy


@dataclass(frozen=True)
class Remote:
    host: str
    user: str | None = None
    port: int | None = None
    python: str | None = None           # --remote-python: run edgellm as PYTHON -m edgellm
    config: str | None = None           # ssh -F: the private copy of --ssh-config
    site: bool = False                  # run the edgellm that --install put in the far side's cache
    config_shown: str | None = None     # --ssh-config as the user named it (for messages)

    @classmethod
    def parse(cls, text: str, python: str | None = None, config: str | None = None) -> "Remote":
        m = TARGET.match(text or "")
        if not m or (m["port"] and not 0 < int(m["port"]) < 65536):
            raise BadInput(f"--remote {text!r}: expected [user@]host[:port]")
        if config is not None:
            config, shown = _private_config(config), config
        else:
            shown = None
        return cls(m["host"].strip("[]"), m["user"], int(m["port"]) if m["port"] else None, python, config,
                   config_shown=shown)

    @property
    def name(self) -> str:
        return (f"{self.user}@" if self.user else "") + self.host + (f":{self.port}" if self.port else "")

    def ssh(self, command: str, stdin=None, timeout: float | None = None, text: bool = True, limit: int = SMALL):
        """Run ``command`` there; a CompletedProcess.  ``stdin``: bytes, text, or chunks of bytes.
        Its stdout past ``limit`` bytes, or stderr past MAX_STDERR, kills ssh: BadInput."""
        args = ["ssh", *SSH_OPTIONS] + (["-F", self.config] if self.config else []) \
            + (["-p", str(self.port)] if self.port else []) \
            + ["--", (f"{self.user}@" if self.user else "") + self.host, command]
        if isinstance(stdin, str):
            stdin = stdin.encode()
        feed = [stdin] if isinstance(stdin, bytes) else stdin
        try:
            code, out, err, over = _converse(args, feed, timeout, limit)
        except FileNotFoundError:
            raise EdgeLLMError("--remote needs the OpenSSH client (ssh) on this machine") from None
        except subprocess.TimeoutExpired:
            raise Unreachable(f"{self.name}: no answer within {timeout:.0f} s") from None
        if over:
            raise BadInput(f"{self.name}: sent back more than {limit if over == 'stdout' else MAX_STDERR:,} "
                           f"bytes on its {over}; refused (not an answer edgellm gives)")
        if text:
            out, err = out.decode("utf-8", "replace"), err.decode("utf-8", "replace")
        return subprocess.CompletedProcess(args, code, out, err)

    def edgellm(self) -> str:
        if self.site:
            return f'PYTHONPATH="$HOME/{SITE}${{PYTHONPATH:+:$PYTHONPATH}}" {self.interpreter()} -m edgellm'
        return f"{shlex.quote(self.python)} -m edgellm" if self.python else "edgellm"

    def interpreter(self) -> str:
        return shlex.quote(self.python) if self.python else "python3"

    def fail(self, r, doing: str) -> EdgeLLMError:
        """One printable line for an ssh command that failed."""
        err = r.stderr if isinstance(r.stderr, str) else r.stderr.decode("utf-8", "replace")
        if self.config and self.config_shown:
            err = err.replace(self.config, self.config_shown)
        err = _ESCAPES.sub("", err)
        last = printable(next((ln.strip() for ln in reversed(err.splitlines()) if ln.strip()), ""))
        if r.returncode == 255:
            if "Permission denied" in err or "Authentication" in err:
                return Unreachable(f"{self.name}: authentication refused ({last}); check the key or ~/.ssh/config")
            if "closed" in err or "broken pipe" in err.lower() or "Timeout" in err or "reset" in err:
                return Unreachable(f"{self.name}: the connection dropped while {doing} ({last})")
            return Unreachable(f"{self.name}: cannot reach it ({last or 'ssh exited 255'})")
        if last.startswith("edgellm: error: "):
            return EdgeLLMError(f"on {self.name}: {last[len('edgellm: error: '):]}")
        return EdgeLLMError(f"{self.name}: {doing} failed (exit {r.returncode}{': ' + last if last else ''})")


def _converse(args: list[str], feed, timeout: float | None, limit: int):
    """Run ssh: ``feed``'s chunks to its stdin (from a thread), its stdout and stderr read as they
    come and counted; (exit code, stdout, stderr, which stream passed its bound or None).  ssh is
    killed on a bound passed, the timeout, or any exception (Ctrl-C included)."""
    proc = subprocess.Popen(args, stdin=subprocess.DEVNULL if feed is None else subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    fed: list[BaseException] = []

    def write():
        try:
            for chunk in feed:
                proc.stdin.write(chunk)
        except OSError:
            pass                        # ssh is gone; its exit code says why
        except BaseException as e:      # noqa: BLE001 - the source failed (a file changed): re-raised below
            fed.append(e)
            proc.kill()
        finally:
            try:
                proc.stdin.close()
            except OSError:
                pass

    writer = threading.Thread(target=write, daemon=True) if feed is not None else None
    bufs = {proc.stdout: bytearray(), proc.stderr: bytearray()}
    caps = {proc.stdout: ("stdout", limit), proc.stderr: ("stderr", MAX_STDERR)}
    deadline = None if timeout is None else time.monotonic() + timeout
    over = None
    try:
        if writer:
            writer.start()
        with selectors.DefaultSelector() as sel:
            for f in bufs:
                sel.register(f, selectors.EVENT_READ)
            while sel.get_map() and over is None:
                wait = None if deadline is None else deadline - time.monotonic()
                if wait is not None and wait <= 0:
                    raise subprocess.TimeoutExpired(args, timeout)
                for key, _ in sel.select(wait):
                    chunk = os.read(key.fd, 1 << 16)
                    if not chunk:
                        sel.unregister(key.fileobj)
                        continue
                    buf = bufs[key.fileobj]
                    buf += chunk
                    if len(buf) > caps[key.fileobj][1]:
                        over = caps[key.fileobj][0]
                        break
        if over is None:
            proc.wait(None if deadline is None else max(deadline - time.monotonic(), 0.1))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for f in bufs:
            f.close()
        if writer:
            writer.join(5)
    if fed:
        raise fed[0]
    return proc.returncode, bytes(bufs[proc.stdout]), bytes(bufs[proc.stderr]), over


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
    where = f"with {quoted(remote.python)}" if remote.python else "on its PATH"
    raise EdgeLLMError(f"{remote.name}: no edgellm {where}; install the light runtime there "
                       "(pip install edgellm), pass --remote-python PATH to the Python that has it, "
                       "or --install to push this one")


def local_wheel(say=lambda s: None) -> Path:
    """A wheel of the edgellm running here, built from its source tree (no network: the build
    backend installed here, no dependencies fetched)."""
    import sys

    import edgellm
    from edgellm.core.files import private_dir

    root = Path(edgellm.__file__).resolve().parent.parent
    if not (root / "pyproject.toml").is_file():
        raise BadInput("--install: this edgellm is not installed from a source tree; pass --install WHEEL")
    out = Path(private_dir("edgellm-wheel-"))
    say(f"building a wheel of {root}")
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                        "--quiet", "--wheel-dir", str(out), str(root)], capture_output=True, text=True)
    wheels = sorted(out.glob("edgellm-*.whl"))
    if r.returncode != 0 or not wheels:
        last = next((ln for ln in reversed(r.stderr.splitlines()) if ln.strip()), "no wheel written")
        raise EdgeLLMError(f"--install: building the wheel failed ({last.strip()})")
    return wheels[0]


def _pread_chunks(fd: int, size: int, shown: str, chunk: int = 1 << 20):
    """``size`` bytes of the open file ``fd`` from its start (pread: its offset is left alone)."""
    offset = 0
    while offset < size:
        block = os.pread(fd, min(chunk, size - offset), offset)
        if not block:
            raise BadInput(f"{shown}: shrank since it was checked; not copied")
        offset += len(block)
        yield block


def _upload(remote: Remote, folder: str, name: str, chunks, sha: str, doing: str) -> None:
    """``chunks`` (bytes) to ``~/folder/name`` there: written to ``name.partial``, renamed only
    once the far side has hashed it to ``sha``.  A copy cut short (ssh killed, this process
    killed: the far side then sees an early end of input) or altered never takes the final name."""
    q, qn, qp = shlex.quote(folder), shlex.quote(name), shlex.quote(name + ".partial")
    digest = (f"{{ sha256sum || shasum -a 256 || {remote.interpreter()} -c "
              "'import hashlib,sys; print(hashlib.file_digest(sys.stdin.buffer, \"sha256\").hexdigest())'; }")
    r = remote.ssh(f"mkdir -p -- {q} && cd -- {q} && {{ cat > {qp} && h=$({digest} < {qp} 2>/dev/null) && "
                   f"[ \"${{h%% *}}\" = {shlex.quote(sha)} ] && mv -f -- {qp} {qn} || {{ rm -f -- {qp}; exit 1; }}; }}",
                   stdin=chunks, text=False)
    if r.returncode != 0:
        if r.returncode == 1 and not r.stderr.strip():
            raise EdgeLLMError(f"{remote.name}: {doing} failed: the copy there does not match its sha256 "
                               "(cut short, or the disk there is full)")
        raise remote.fail(r, doing)


def _open_checked(path: Path, limit: int, what: str, follow: bool = False) -> tuple[int, int]:
    """(descriptor, size) of a regular file (not through a link unless ``follow``), opened
    without blocking, so a FIFO or a device is refused rather than waited on."""
    try:
        fd = os.open(path, os.O_RDONLY | (0 if follow else getattr(os, "O_NOFOLLOW", 0)) | getattr(os, "O_NONBLOCK", 0))
    except OSError as e:
        raise BadInput(f"{what} {quoted(str(path))}: cannot read it ({e.strerror})") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_size > limit:
        os.close(fd)
        raise BadInput(f"{what} {quoted(str(path))}: not a regular file of at most {limit:,} bytes")
    return fd, st.st_size


def install(remote: Remote, wheel: Path, say=lambda s: None) -> Remote:
    """Push ``wheel`` and unpack it into the far side's cache (``~/.cache/edgellm/remote/site``,
    no dependencies fetched: numpy and llama-cpp-python must be there already); the remote that
    runs it."""
    say(f"installing {wheel.name} on {remote.name}")
    fd, size = _open_checked(wheel, MAX_WHEEL, "--install", follow=True)
    try:
        h = hashlib.sha256()
        for block in _pread_chunks(fd, size, str(wheel)):
            h.update(block)
        _upload(remote, CACHE, wheel.name, _pread_chunks(fd, size, str(wheel)), h.hexdigest(), "copying the wheel")
    finally:
        os.close(fd)
    q, qn = shlex.quote(CACHE), shlex.quote(wheel.name)
    r = remote.ssh(f"cd -- {q} && rm -rf site.new && {remote.interpreter()} -m pip install --quiet --no-deps "
                   f"--no-index --disable-pip-version-check --target site.new {qn} && rm -rf site && "
                   f"mv site.new site && rm -f -- {qn}", timeout=600)
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


def _sources(bundle) -> tuple[dict[str, int], list[int]]:
    """Each listed file's descriptor as ``open_bundle`` checked it: the very descriptors it
    opened and hashed (kept in the file order of the manifest), or, where it copied a shared
    bundle into its private folder, those verified copies; (name -> fd, fds to close after)."""
    names = list(bundle.manifest["files"])
    if bundle._fds and len(bundle._fds) == len(names):
        return dict(zip(names, bundle._fds)), []
    if bundle.load_dir is None:
        raise EdgeLLMError("push needs a bundle opened with its files checked")
    fds = {n: _open_checked(bundle.load_dir / n, 1 << 62, "checked copy")[0] for n in names}
    return fds, list(fds.values())


def _manifest_bytes(bundle) -> bytes:
    """The manifest's bytes, read again (a regular file, not a link, bounded) and required to be the
    manifest that was checked."""
    from edgellm.runtime.bundle import MANIFEST, MAX_MANIFEST

    path = bundle.folder / MANIFEST
    fd, size = _open_checked(path, MAX_MANIFEST, "manifest")
    with os.fdopen(fd, "rb") as f:
        data = f.read(MAX_MANIFEST + 1)
    try:
        same = json.loads(data) == bundle.manifest
    except (ValueError, RecursionError):
        same = False
    if not same:
        raise BadInput(f"{path}: changed since it was checked; not copied")
    return data


def push(remote: Remote, bundle, say=lambda s: None) -> tuple[str, int]:
    """Copy the checked bundle (``open_bundle(..., check=True)``) to the far side; (its folder
    there, bytes sent)."""
    from edgellm.runtime.bundle import MANIFEST

    manifest = _manifest_bytes(bundle)
    files = dict(bundle.manifest["files"])
    files[MANIFEST] = {"sha256": hashlib.sha256(manifest).hexdigest(), "bytes": len(manifest)}
    where = remote_dir(bundle.folder, files[MANIFEST]["sha256"])
    q, qs = shlex.quote(where), shlex.quote(where + SUMS)
    # the sums recorded at the last copy, trusted while a file's size and mtime are unchanged (the
    # far side's edgellm checks every sha256 when it opens the bundle anyway): no re-hashing there
    listing = remote.ssh(f"mkdir -p -- {q} && (cat -- {qs} 2>/dev/null || true) && echo {SECTION} && cd -- {q} && "
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
    fds, opened = _sources(bundle)
    try:
        for n in todo:
            say(f"copying {n} ({files[n]['bytes']:,} bytes) to {remote.name}")
            chunks = [manifest] if n == MANIFEST else _pread_chunks(fds[n], files[n]["bytes"], str(bundle.folder / n))
            _upload(remote, where, n, chunks, files[n]["sha256"], f"copying {n}")
    finally:
        for fd in opened:
            os.close(fd)
    if todo:
        sums = "".join(f"{meta['sha256']} {n}\n" for n, meta in files.items())
        r = remote.ssh(f"while read -r sha name; do set -- $(stat -c '%s %Y' -- {q}/\"$name\") && "
                       f"echo \"$sha $1 $2 $name\"; done > {qs}.partial && mv -f -- {qs}.partial {qs}",
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
        if len(f) >= 4 and f[3].isdigit() and len(f[3]) < 20:
            free = int(f[3]) * 1024
    return recorded, stats, free


def reach(remote: Remote, wheel: Path | None, say=lambda s: None) -> Remote:
    """The far side ready to run edgellm: ``wheel`` (--install) installed there first if given."""
    if wheel is None:
        return check_runtime(remote)
    if not re.fullmatch(r"edgellm-[A-Za-z0-9_.+-]+\.whl", wheel.name) or not wheel.is_file():
        raise BadInput(f"--install {quoted(str(wheel))}: not an edgellm wheel file")
    r = remote.ssh("true", timeout=60)
    if r.returncode != 0:
        raise remote.fail(r, "connecting")
    return install(remote, wheel, say)


def profile_remote(remote: Remote, bundle, args: list[str], clean: bool, say=lambda s: None,
                   depths: list[int] | None = None) -> tuple[list, int]:
    """Profile ``bundle`` (opened with its files checked) on ``remote`` (see :func:`reach`) with
    edgellm's ``profile`` ``args``; (its JSON records, checked as :func:`checked_records` says,
    bytes sent)."""
    where, sent = push(remote, bundle, say)
    say(f"profiling on {remote.name}")
    try:
        r = remote.ssh(f"cd && {remote.edgellm()} profile {shlex.quote(where)} --json "
                       + " ".join(shlex.quote(a) for a in args), text=False, limit=MAX_PROFILE,
                       timeout=MAX_WORK_S)
        if r.returncode != 0:
            remote.ssh(f"rm -f -- {shlex.quote(where + SUMS)}", timeout=60)    # the next run re-checks every file
            raise remote.fail(r, "profiling")
        try:
            data = json.loads(r.stdout)            # NaN and 1e999 are floats here, refused by field below
        except (ValueError, RecursionError):
            raise BadInput(f"{remote.name}: its edgellm printed no profile JSON; is it an older version?") from None
    finally:
        if clean:
            remote.ssh(f"rm -rf -- {shlex.quote(where)} {shlex.quote(where + SUMS)}", timeout=60)
    return checked_records(data, remote.name, str(bundle.folder), depths), sent


# --- what comes back, checked as local input is ------------------------------------------------

class _Bad(Exception):
    def __init__(self, path: str, why: str):
        super().__init__(path, why)
        self.path, self.why = path, why


def _num(lo: float, hi: float, whole: bool = False, null: bool = False):
    def check(v, path):
        if v is None and null:
            return v
        kind = int if whole else (int, float)
        if isinstance(v, bool) or not isinstance(v, kind) or (isinstance(v, float) and not math.isfinite(v)) \
                or not lo <= v <= hi:
            raise _Bad(path, f"expected a {'whole' if whole else 'finite'} number from {lo:g} to {hi:g}, "
                             f"got {quoted(json.dumps(v)[:60])}")
        return v
    return check


def _text(pattern: str | None = None, null: bool = False, what: str = "printable text"):
    def check(v, path):
        if v is None and null:
            return v
        if not isinstance(v, str) or len(v) > MAX_TEXT or not v.isprintable() or \
                (pattern is not None and not re.fullmatch(pattern, v)):
            raise _Bad(path, f"expected {what} of at most {MAX_TEXT} characters, "
                             f"got {quoted(printable(json.dumps(v)), 60)}")
        return v
    return check


def _items(item, most: int):
    def check(v, path):
        if not isinstance(v, list) or len(v) > most:
            raise _Bad(path, f"expected a list of at most {most:,} items")
        return [item(x, f"{path}[{i}]") for i, x in enumerate(v)]
    return check


def _table(spec: dict, required: set[str]):
    """Known keys checked, unknown ones dropped (a newer far side may add some)."""
    def check(v, path):
        if not isinstance(v, dict):
            raise _Bad(path, "expected an object")
        missing = sorted(required - set(v))
        if missing:
            raise _Bad(f"{path}.{missing[0]}", "missing")
        return {k: spec[k](v[k], f"{path}.{k}") for k in spec if k in v}
    return check


def _plain_json(v, path, depth: int = 0):
    """Free-form data (the conditions: sensor names, clocks): JSON of bounded depth and size,
    finite numbers, printable text."""
    if depth > 8:
        raise _Bad(path, "nested too deep")
    if v is None or isinstance(v, bool):
        return v
    if isinstance(v, (int, float)):
        return _num(-(1 << 63), 1 << 63)(v, path)
    if isinstance(v, str):
        return _text()(v, path)
    if isinstance(v, list):
        return _items(lambda x, p: _plain_json(x, p, depth + 1), 1 << 17)(v, path)
    if isinstance(v, dict) and len(v) <= 1024:
        return {_text()(k, f"{path} key"): _plain_json(x, f"{path}.{k}", depth + 1) for k, x in v.items()}
    raise _Bad(path, "expected an object of at most 1,024 keys")


_RATE, _SECONDS = _num(0, 1e9), _num(0, 1e6)
_MEASURED = _table({"threads": _num(1, 1 << 16, True), "prompt_tokens": _num(0, 1 << 24, True),
                    "gen_tokens": _num(0, 1 << 24, True), "repeats": _num(1, 1 << 20, True), "load_s": _SECONDS,
                    "ttft_s": _SECONDS, "prefill_tps": _RATE, "decode_tps": _RATE,
                    "peak_rss_bytes": _num(0, 1 << 50, True), "depth": _num(0, 1 << 24, True),
                    "samples_prefill_tps": _items(_RATE, 1 << 20), "samples_decode_tps": _items(_RATE, 1 << 20)},
                   {"threads", "load_s", "ttft_s", "prefill_tps", "decode_tps", "peak_rss_bytes", "depth"})
_EDGELLM = _table({"measured": _MEASURED, "conditions": _plain_json, "sustained": _plain_json}, {"measured"})
_RECORD = _table({"build_commit": _text(null=True), "cpu_info": _text(), "model_filename": _text(null=True),
                  "model_type": _text(null=True), "model_size": _num(0, 1 << 50, True, True),
                  "model_n_params": _num(0, 1 << 50, True, True), "type_k": _text(null=True),
                  "type_v": _text(null=True), "backends": _text(null=True), "n_threads": _num(1, 1 << 16, True),
                  "n_depth": _num(0, 1 << 24, True), "test": _text(r"(pp|tg)[0-9]{1,8}", what="a test like tg128"),
                  "n_prompt": _num(0, 1 << 24, True), "n_gen": _num(0, 1 << 24, True), "avg_ts": _RATE,
                  "stddev_ts": _RATE, "samples_ts": _items(_RATE, 1 << 20), "avg_ns": _num(0, 1 << 63, True),
                  "edgellm": _EDGELLM},
                 {"cpu_info", "n_depth", "test", "n_prompt", "n_gen", "avg_ts", "edgellm"})


def checked_records(data, host: str, bundle: str, depths: list[int] | None = None) -> list[dict]:
    """The far side's profile records checked like local input: a pp and a tg record per depth (in
    ``depths``' order when given), every field used of its type and in a sane range (finite
    numbers, printable text), unknown fields dropped, the bundle named as it is here.  BadInput
    naming the first bad field."""
    try:
        n = 2 * len(depths) if depths else None
        if not isinstance(data, list) or not data or len(data) % 2 or len(data) > 64 or (n and len(data) != n):
            raise _Bad("records", f"expected a list of {n or 'an even number of'} profile records")
        out = []
        for i, rec in enumerate(data):
            r = _RECORD(rec, f"records[{i}]")
            m = r["edgellm"]["measured"]
            if r["test"][:2] != ("pp", "tg")[i % 2]:
                raise _Bad(f"records[{i}].test", f"expected a {('pp', 'tg')[i % 2]} test, got {r['test']!r}")
            if r["n_depth"] != m["depth"] or (depths and m["depth"] != depths[i // 2]):
                raise _Bad(f"records[{i}].n_depth", "not the depth asked for")
            r["edgellm"]["bundle"] = bundle
            out.append(r)
    except _Bad as e:
        raise BadInput(f"{host}: the profile it sent back has a bad {e.path!r}: {e.why}") from None
    return out
