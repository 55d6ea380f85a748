"""Bundle packaging shared by every format: a temporary folder next to the destination, the
tokenizer files, the manifest, and the rename that makes the bundle appear only when complete."""

from __future__ import annotations

import json
import os
import shutil
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Callable, Iterator

from edgellm import __version__
from edgellm.core.files import sha256_file
from edgellm.core.output import check_space, claimed, temp_name, write_error
from edgellm.runtime.bundle import BUNDLE_FORMAT, BUNDLE_VERSION, MANIFEST

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "chat_template.jinja", "generation_config.json", "config.json")


def is_bundle(path: Path) -> bool:
    """A folder an export wrote (its manifest reads), so ``--force`` may replace it."""
    from edgellm.errors import EdgeLLMError
    from edgellm.runtime.bundle import read_manifest

    try:
        read_manifest(path)
    except EdgeLLMError:
        return False
    return True



def tool_versions(packages: tuple[str, ...]) -> dict:
    import importlib.metadata as md

    out = {"edgellm": __version__}
    for pkg in packages:
        try:
            out[pkg] = md.version(pkg.replace("_", "-"))
        except md.PackageNotFoundError:
            pass
    return out


def swap_in(tmp: Path, out: Path) -> None:
    """Put the finished bundle at ``out``.  A bundle replaced with --force is first moved aside and
    removed only once the new one is in place, so no moment leaves neither."""
    old = None
    if out.exists() or out.is_symlink():
        old = temp_name(out, "old")
        os.replace(out, old)
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old) if old.is_dir() and not old.is_symlink() else old.unlink()


@contextmanager
def staging(out: Path, force: bool, needed: int | None = None, claim: bool = True,
            recognise: Callable[[Path], bool] = is_bundle, kind: str = "bundle") -> Iterator[Path]:
    """A fresh ``.<name>.partial-<pid>`` folder for the caller to fill; on success it becomes
    ``out``, on any error (a full disk, Ctrl-C, SIGTERM) it is removed.  The output is claimed
    first (edgellm/core/output.py: locked, replaceable only if it is a bundle, free space for
    ``needed`` bytes); ``claim=False`` when the caller already holds it."""
    out = Path(out)
    with claimed(out, force, recognise, kind) if claim else nullcontext():
        free = check_space(out.parent, needed)
        tmp = temp_name(out, "partial")
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            tmp.mkdir()
            yield tmp
            swap_in(tmp, out)
        except BaseException as e:
            said = write_error(e, out, needed, free) if isinstance(e, Exception) else None
            shutil.rmtree(tmp, ignore_errors=True)
            if said is not None:
                raise said from None
            raise


def copy_tokenizer(model_dir: Path, tmp: Path) -> None:
    """The tokenizer files into the bundle, each read guarded (inside the folder, a regular file,
    bounded: a 10 GB sparse special_tokens_map.json is refused, not copied)."""
    from edgellm.core.model_files import member
    from edgellm.core.files import MAX_CONFIG_BYTES, read_small_bytes

    for fname in TOKENIZER_FILES:
        src = member(model_dir, fname, "tokenizer file")
        if src.is_file():
            (tmp / fname).write_bytes(read_small_bytes(src, 256 << 20 if fname == "tokenizer.json" else MAX_CONFIG_BYTES))


def write_manifest(tmp: Path, artifact: str, body: dict, tools: dict, known: dict | None = None) -> dict:
    """manifest.json: ``body`` plus the size and sha256 of every file in the folder (``known``:
    digests the writer took as it wrote, file name -> hex; the others are read and hashed)."""
    known = known or {}
    files = {p.name: {"sha256": known.get(p.name) or sha256_file(p), "bytes": p.stat().st_size}
             for p in sorted(tmp.iterdir()) if p.is_file()}
    manifest = {"format": BUNDLE_FORMAT, "version": BUNDLE_VERSION, "artifact": artifact, **body,
                "files": files, "tools": tools}
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return files
