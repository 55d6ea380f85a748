"""Opening an export bundle on the device: the manifest, and a checksum for every file.

A bundle is a folder: the model file, the tokenizer files, and ``manifest.json``, which records
each file's sha256 and size.  Before anything is loaded, every listed file is hashed; one changed
byte fails naming the file.  Paths in the manifest must be plain names inside the bundle (no
absolute paths, no ``..``, no links), so a manifest cannot point the runtime elsewhere.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from edgellm.errors import BadInput

MANIFEST = "manifest.json"
BUNDLE_FORMAT = "edgellm-bundle"
BUNDLE_VERSION = 1


def sha256_file(path: Path, chunk: int = 8 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class Bundle:
    folder: Path
    manifest: dict

    @property
    def artifact(self) -> Path:
        return self.folder / self.manifest["artifact"]

    @property
    def format(self) -> str:
        return self.manifest["choice"]["format"]


def _safe_member(folder: Path, name: str) -> Path:
    p = Path(name)
    if p.is_absolute() or ".." in p.parts or len(p.parts) != 1:
        raise BadInput(f"{folder / MANIFEST}: file entry {name!r} is not a plain name inside the bundle")
    full = folder / p
    if full.is_symlink():
        raise BadInput(f"{full}: is a link; bundles hold plain files only")
    return full


def open_bundle(folder: Path, check: bool = True) -> Bundle:
    """Read the manifest and (with ``check``) verify every file's size and sha256."""
    folder = Path(folder)
    mpath = folder / MANIFEST
    if not folder.is_dir():
        raise BadInput(f"{folder}: no such bundle folder")
    try:
        manifest = json.loads(mpath.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BadInput(f"{folder}: no {MANIFEST}; not an edgellm bundle (or an unfinished export)") from None
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise BadInput(f"{mpath}: unreadable manifest ({e})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != BUNDLE_FORMAT:
        raise BadInput(f"{mpath}: not an edgellm bundle manifest")
    if manifest.get("version") != BUNDLE_VERSION:
        raise BadInput(f"{mpath}: bundle version {manifest.get('version')} is not supported")
    files = manifest.get("files")
    if not isinstance(files, dict) or manifest.get("artifact") not in files:
        raise BadInput(f"{mpath}: the manifest lists no files or not its artifact")
    for name, meta in files.items():
        path = _safe_member(folder, name)
        if not path.is_file():
            raise BadInput(f"{path}: listed in the manifest but missing")
        if check:
            if path.stat().st_size != meta.get("bytes") or sha256_file(path) != meta.get("sha256"):
                raise BadInput(f"{path}: checksum mismatch; the file changed since export (corrupt or tampered)")
    return Bundle(folder, manifest)
