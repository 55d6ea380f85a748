"""Finding device profiles: a path, the user's own folder, or the profiles shipped with edgellm.

Lookup order for ``--device X``: an existing ``.toml`` path; ``X.toml`` in the user folder
(``$EDGELLM_DEVICES_DIR``, else ``~/.config/edgellm/devices``, where ``edgellm device measure``
writes); a bundled profile or one of its aliases.  A user profile with a bundled name wins, so a
measured profile can replace a published one.
"""

from __future__ import annotations

import difflib
import os
import tomllib
from importlib import resources
from pathlib import Path

from edgellm.devices.schema import DeviceProfile, profile_from_dict
from edgellm.errors import BadInput


def user_dir() -> Path:
    env = os.environ.get("EDGELLM_DEVICES_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "edgellm" / "devices"


def _bundled_files() -> list[Path]:
    folder = resources.files("edgellm.device_profiles")
    return sorted(Path(str(f)) for f in folder.iterdir() if f.name.endswith(".toml"))


def _user_files() -> list[Path]:
    d = user_dir()
    return sorted(d.glob("*.toml")) if d.is_dir() else []


MAX_PROFILE_BYTES = 1 << 20


def load_file(path: Path) -> DeviceProfile:
    """Read and validate one profile file."""
    from edgellm.core.files import read_small_bytes

    if not Path(path).exists() and not Path(path).is_symlink():
        raise BadInput(f"{path}: no such device profile file")
    raw = read_small_bytes(Path(path), MAX_PROFILE_BYTES)       # a regular file, bounded
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise BadInput(f"{path}: not UTF-8 text (byte {e.start})") from None
    return profile_from_text(text, str(path))


def parse_toml(text: str, source: str) -> dict:
    """TOML from a file or another machine, as a dict; BadInput naming ``source`` (tomllib raises
    ValueError for an integer too long to convert and RecursionError for deep nesting, besides
    its own TOMLDecodeError)."""
    try:
        return tomllib.loads(text)
    except (ValueError, RecursionError) as e:
        raise BadInput(f"{source}: not valid TOML ({str(e)[:200] or type(e).__name__})") from None


def profile_from_text(text: str, source: str) -> DeviceProfile:
    return profile_from_dict(parse_toml(text, source), source)


def all_profiles() -> list[DeviceProfile]:
    """Every profile edgellm can see: the user's first, then bundled ones they do not shadow."""
    seen: dict[str, DeviceProfile] = {}
    for path in _user_files() + _bundled_files():
        prof = load_file(path)
        if prof.name != path.stem:
            raise BadInput(f"{path}: name: '{prof.name}' must match the file name '{path.stem}'")
        seen.setdefault(prof.name, prof)
    return list(seen.values())


def find(name_or_path: str) -> DeviceProfile:
    """Resolve ``--device``: a path, a profile name, or an alias; suggest close names otherwise."""
    path = Path(name_or_path)
    if name_or_path.endswith(".toml") or path.is_file() or ("/" in name_or_path and os.path.lexists(path)):
        return load_file(path)
    profiles = all_profiles()
    for prof in profiles:
        if prof.name == name_or_path:
            return prof
    for prof in profiles:
        if name_or_path in prof.aliases:
            return prof
    names = [p.name for p in profiles] + [a for p in profiles for a in p.aliases]
    close = difflib.get_close_matches(name_or_path, names, n=3, cutoff=0.5)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    raise BadInput(f"unknown device '{name_or_path}': {hint}"
                   f"'edgellm devices' lists the {len(profiles)} known profiles")
