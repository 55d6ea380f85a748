"""The files of a model folder, which comes from strangers.

A name that one of the folder's own files gives (a shard named by ``model.safetensors.index.json``)
must be a plain file name, and every file read must be inside the folder: a link may point only
within it, or, for a Hugging Face cache snapshot (``models--ORG--NAME/snapshots/REV/``), within
that repository's cache, whose snapshot files are links into its ``blobs/``.  A refused name is
reported by name only, never with bytes of whatever it points at.
"""

from __future__ import annotations

from pathlib import Path

from edgellm.errors import BadInput
from edgellm.core.files import plain_name
from edgellm.textfmt import quoted

shown = quoted          # a stranger's name, quoted and cut short for an error line


def allowed_root(folder: Path) -> Path:
    """Where links in ``folder`` may point: the folder, or its Hugging Face cache repository."""
    folder = Path(folder).resolve()
    if folder.parent.name == "snapshots" and folder.parent.parent.name.startswith("models--"):
        return folder.parent.parent
    return folder


def inside(folder: Path, path: Path, what: str = "file") -> Path:
    """``path`` (a file in ``folder``), checked not to lead out of it through a link."""
    path = Path(path)
    if path.is_symlink():
        target = path.resolve()
        root = allowed_root(folder)
        if target != root and root not in target.parents:
            raise BadInput(f"{path}: this {what} is a link out of the model folder; edgellm reads only "
                           "files inside it")
    return path


def member(folder: Path, name, what: str = "file", named_by: Path | None = None) -> Path:
    """The file ``name`` names in ``folder``: a plain name (no folder part, no ``..``, not
    absolute) that stays inside the folder.  ``named_by``: the file that gave the name."""
    by = f"{named_by}: " if named_by else f"{folder}: "
    if not plain_name(name):
        raise BadInput(f"{by}{what} name {shown(str(name))} is not a plain file name inside the model folder")
    return inside(folder, Path(folder) / name, what)
