"""Opening an export bundle on the device: the manifest, and a checksum for every file, bound to
what the runtime then reads.

A bundle is a folder: the model file(s), the tokenizer files, and ``manifest.json``, which records
each file's sha256 and size.  It may come from a stranger, so:

- the manifest is read with bounds (a regular file of at most ``MAX_MANIFEST`` bytes, opened
  without blocking: a FIFO or /dev/zero is refused, not waited on) and every field is checked
  before use;
- the folder holds exactly the files the manifest lists: plain names, regular files, no links, no
  sub-folders, nothing unlisted (ONNX external data, a tokenizer file: whatever a runtime might
  open is listed and checked);
- every file is opened once (never following a link) and hashed *through that open file*.  The
  runtime then reads those same open files, through a private folder of ``/proc/self/fd`` links,
  so a file swapped in after the check is never the one loaded.  When others can write to the
  bundle (group- or world-writable, or someone else's), the files are instead copied, verified
  as they are copied, into that private folder, so nobody can change them under the runtime.
"""

from __future__ import annotations

import atexit
import hashlib
import os
import re
import shutil
import stat
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from edgellm.errors import BadInput, EdgeLLMError
from edgellm.core.files import plain_name

MANIFEST = "manifest.json"
BUNDLE_FORMAT = "edgellm-bundle"
BUNDLE_VERSION = 1
MAX_MANIFEST = 4 << 20          # a real manifest is a few KB (a calibrated mix lists every tensor)
MAX_FILES = 256
SHA256 = re.compile(r"^[0-9a-f]{64}$")
RUN_PREFIX = "edgellm-run-"
_FD_DIR = next((d for d in ("/proc/self/fd", "/dev/fd") if os.path.isdir(d)), None)


@dataclass
class Bundle:
    folder: Path                        # the bundle as the user named it
    manifest: dict
    load_dir: Path | None = None        # where the runtime reads the checked files (None: folder)
    _fds: list[int] = field(default_factory=list, repr=False)

    @property
    def artifact(self) -> Path:
        return (self.load_dir or self.folder) / self.manifest["artifact"]

    @property
    def format(self) -> str:
        return self.manifest["choice"]["format"]

    def shown(self, text: str) -> str:
        """A runtime's message about a file it loaded, naming the bundle rather than the private folder."""
        return text.replace(str(self.load_dir), str(self.folder)) if self.load_dir else text

    def close(self) -> None:
        for fd in self._fds:
            try:
                os.close(fd)
            except OSError:
                pass
        self._fds.clear()
        if self.load_dir is not None:
            shutil.rmtree(self.load_dir, ignore_errors=True)


def _fail(mpath: Path, what: str) -> BadInput:
    return BadInput(f"{mpath}: {what}")


def read_manifest(folder: Path) -> dict:
    """``folder``'s manifest, bounded and checked field by field; BadInput naming the flaw."""
    from edgellm.core.files import read_small_bytes

    folder = Path(folder)
    mpath = folder / MANIFEST
    if not folder.is_dir():
        raise BadInput(f"{folder}: no such bundle folder")
    if mpath.is_symlink():
        raise _fail(mpath, "is a link; a bundle holds plain files only")
    if not mpath.exists():
        raise BadInput(f"{folder}: no {MANIFEST}; not an edgellm bundle (or an unfinished export)")
    from edgellm.core.files import loads_json

    manifest = loads_json(read_small_bytes(mpath, MAX_MANIFEST), mpath)     # NaN, 1e999: refused
    if not isinstance(manifest, dict) or manifest.get("format") != BUNDLE_FORMAT:
        raise _fail(mpath, "not an edgellm bundle manifest")
    version = manifest.get("version")
    if version != BUNDLE_VERSION or isinstance(version, bool):
        shown = version if isinstance(version, int) and not isinstance(version, bool) else repr(str(version)[:40])
        raise _fail(mpath, f"bundle version {shown} is not supported (this edgellm reads version {BUNDLE_VERSION})")
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        raise _fail(mpath, "the manifest lists no files")
    if len(files) > MAX_FILES:
        raise _fail(mpath, f"the manifest lists {len(files)} files; a bundle has at most {MAX_FILES}")
    for name, meta in files.items():
        _plain(mpath, name)
        if not (isinstance(meta, dict) and isinstance(meta.get("sha256"), str) and SHA256.match(meta["sha256"])
                and isinstance(meta.get("bytes"), int) and not isinstance(meta["bytes"], bool) and meta["bytes"] >= 0):
            raise _fail(mpath, f"file entry {name!r} needs a 64-digit lowercase hex 'sha256' and a 'bytes' count")
    if not isinstance(manifest.get("artifact"), str) or manifest["artifact"] not in files:
        raise _fail(mpath, "the manifest's 'artifact' is not one of its files")
    if not isinstance(manifest.get("choice"), dict):
        raise _fail(mpath, "the manifest has no build 'choice' object")
    for key in ("prediction", "verification", "model"):
        if key in manifest and not isinstance(manifest[key], dict):
            raise _fail(mpath, f"the manifest's {key!r} is not an object")
    from edgellm.runtime.schema import SchemaError, schema, validate

    try:
        validate(manifest, schema(BUNDLE_VERSION))
    except SchemaError as e:
        raise _fail(mpath, f"the manifest breaks its schema (runtime/schemas/bundle-manifest-v{BUNDLE_VERSION}"
                           f".schema.json) at {e}") from None
    return manifest


def _plain(mpath: Path, name) -> None:
    if not plain_name(name) or name == MANIFEST:
        shown = repr(name)[:120]
        raise _fail(mpath, f"file entry {shown} is not a plain name inside the bundle")


def _open_listed(folder: Path, name: str) -> tuple[int, os.stat_result]:
    path = folder / name
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise BadInput(f"{path}: listed in the manifest but missing") from None
    except OSError as e:
        if path.is_symlink():
            raise BadInput(f"{path}: is a link; bundles hold plain files only") from None
        raise BadInput(f"{path}: cannot read it ({e.strerror})") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise BadInput(f"{path}: not a regular file; bundles hold plain files only")
    return fd, st


def _shared(folder_st: os.stat_result, st: os.stat_result) -> bool:
    """Could someone other than this user (or root) change the file in place?"""
    me = os.geteuid() if hasattr(os, "geteuid") else 0
    def others(s):
        return bool(s.st_mode & (stat.S_IWGRP | stat.S_IWOTH)) or s.st_uid not in (me, 0)
    return others(folder_st) or others(st)


def _hash_fd(fd: int, copy_to: Path | None, chunk: int = 8 << 20) -> tuple[str, int]:
    h, n = hashlib.sha256(), 0
    out = open(copy_to, "wb") if copy_to is not None else None
    try:
        offset = 0
        while block := os.pread(fd, chunk, offset):
            h.update(block)
            if out is not None:
                out.write(block)
            offset += len(block)
            n += len(block)
    finally:
        if out is not None:
            out.close()
    return h.hexdigest(), n


def _private_dir() -> Path:
    _remove_stale_run_dirs()
    d = Path(tempfile.mkdtemp(prefix=f"{RUN_PREFIX}{os.getpid()}-"))
    return d


def _remove_stale_run_dirs() -> None:
    """Private folders of runs whose process is gone (killed before cleaning up)."""
    tmp = Path(tempfile.gettempdir())
    try:
        entries = list(tmp.glob(f"{RUN_PREFIX}*-*"))
    except OSError:
        return
    for p in entries:
        m = re.match(rf"^{RUN_PREFIX}(\d+)-", p.name)
        if not m or not p.is_dir() or p.is_symlink():
            continue
        try:
            os.kill(int(m[1]), 0)
        except ProcessLookupError:
            shutil.rmtree(p, ignore_errors=True)
        except OSError:
            pass


def open_bundle(folder: Path, check: bool = True) -> Bundle:
    """Read the manifest and (with ``check``) verify every file's size and sha256 through the
    open file, and prepare the private folder the runtime loads from (see the module text)."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    files = manifest["files"]
    mpath = folder / MANIFEST
    for entry in os.scandir(folder):
        if entry.name == MANIFEST:
            continue
        if entry.name not in files:
            kind = "link" if entry.is_symlink() else "folder" if entry.is_dir() else "file"
            raise BadInput(f"{folder / entry.name}: a {kind} the manifest does not list; a bundle holds "
                           "only the files its manifest lists (remove it, or export again)")
    if not check:
        return Bundle(folder, manifest)
    folder_st = os.stat(folder)
    opened = [(name, *_open_listed(folder, name)) for name in files]
    copy = any(_shared(folder_st, st) for _, _, st in opened)
    # where neither /proc/self/fd nor /dev/fd exists (Windows), a private folder the user alone can
    # change is read in place
    load_dir = _private_dir() if copy or _FD_DIR is not None else None
    bundle = Bundle(folder, manifest, load_dir, [fd for _, fd, _ in opened])
    atexit.register(bundle.close)
    try:
        for name, fd, st in opened:
            meta = files[name]
            if st.st_size != meta["bytes"]:
                raise BadInput(f"{folder / name}: {st.st_size} bytes, the manifest says {meta['bytes']}; "
                               "the file changed since export (corrupt, truncated or tampered)")
            digest, n = _hash_fd(fd, load_dir / name if copy else None)
            if digest != meta["sha256"] or n != meta["bytes"]:
                raise BadInput(f"{folder / name}: checksum mismatch; the file changed since export (corrupt or tampered)")
            if load_dir is not None and not copy:
                os.symlink(f"{_FD_DIR}/{fd}", load_dir / name)
        if copy:
            for fd in bundle._fds:
                os.close(fd)
            bundle._fds.clear()
    except OSError as e:
        bundle.close()
        raise EdgeLLMError(f"{mpath.parent}: cannot prepare the checked files ({e.strerror})") from None
    except BaseException:
        bundle.close()
        raise
    return bundle
