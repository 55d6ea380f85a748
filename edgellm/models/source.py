"""Where a model's config.json comes from.

``MODEL`` may be a local folder (or a config.json path), or a hub id such as
``Qwen/Qwen2.5-0.5B-Instruct``.  For a hub id edgellm looks, in order, in the local Hugging Face
cache, in the configs shipped with edgellm, and only then on the network (never when
``HF_HUB_OFFLINE`` is set).  Nothing is executed: config.json is parsed as JSON, and only that.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from edgellm.errors import BadInput, Unreachable

MAX_CONFIG_JSON = 4 << 20            # real config.json files are a few KB
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")


@dataclass(frozen=True)
class ConfigSource:
    data: dict
    where: str          # "local folder", "Hugging Face cache", "bundled example", "hub"
    path: str


def _parse(text: str, where: str) -> dict:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise BadInput(f"{where}: config.json is not valid JSON ({e.msg} at line {e.lineno})") from None
    except (ValueError, RecursionError):
        raise BadInput(f"{where}: config.json is not valid JSON (nested too deep, or a number too long)") from None
    if not isinstance(data, dict):
        raise BadInput(f"{where}: config.json must hold a JSON object")
    return data


def _read_local(path: Path) -> ConfigSource:
    """A folder's config.json (a link out of the folder is refused, as a weights file's is), or
    the config.json file the user named; a regular file, bounded, read without blocking."""
    from edgellm.core.model_files import inside
    from edgellm.core.files import read_small_text

    cfg = inside(path, path / "config.json", "config.json") if path.is_dir() else path
    if not cfg.exists():
        raise BadInput(f"{path}: no config.json in this folder; is it a Hugging Face model folder?")
    text = read_small_text(cfg, MAX_CONFIG_JSON)
    return ConfigSource(_parse(text, str(cfg)), "local folder", str(cfg))


def _hf_cache_dir() -> Path:
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    home = os.environ.get("HF_HOME") or str(Path.home() / ".cache" / "huggingface")
    return Path(home) / "hub"


def _from_hf_cache(hub_id: str) -> ConfigSource | None:
    repo = _hf_cache_dir() / ("models--" + hub_id.replace("/", "--"))
    ref = repo / "refs" / "main"
    snapshots = []
    if ref.is_file():
        from edgellm.core.files import plain_name
        from edgellm.core.files import read_small_text

        rev = read_small_text(ref, 4096).strip()
        if plain_name(rev):
            snapshots.append(repo / "snapshots" / rev)
    if (repo / "snapshots").is_dir():
        snapshots += sorted((repo / "snapshots").iterdir())
    for snap in snapshots:
        if (snap / "config.json").is_file():
            src = _read_local(snap)
            return ConfigSource(src.data, "Hugging Face cache", src.path)
    return None


def bundled_ids() -> list[str]:
    folder = resources.files("edgellm.models.examples")
    return sorted(f.name[:-5].replace("--", "/", 1) for f in folder.iterdir() if f.name.endswith(".json"))


def _from_bundled(hub_id: str) -> ConfigSource | None:
    folder = resources.files("edgellm.models.examples")
    for f in folder.iterdir():
        if f.name.lower() == hub_id.replace("/", "--", 1).lower() + ".json":
            return ConfigSource(_parse(f.read_text(encoding="utf-8"), f.name), "bundled example",
                                f"edgellm/models/examples/{f.name}")
    return None


def _from_hub(hub_id: str) -> ConfigSource:
    import urllib.error     # imported here: only a hub fetch needs it, and it is slow to import
    import urllib.request

    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        raise Unreachable(f"{hub_id}: not in the local Hugging Face cache and HF_HUB_OFFLINE is set; "
                          "pass a local model folder")
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
    url = f"{endpoint}/{hub_id}/resolve/main/config.json"
    req = urllib.request.Request(url, headers={"User-Agent": "edgellm"})
    token = os.environ.get("HF_TOKEN")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            text = resp.read(4 << 20).decode("utf-8")
    except urllib.error.HTTPError as e:
        if e.code in (401, 403):
            raise Unreachable(f"{hub_id}: the hub refused access (HTTP {e.code}); gated models need HF_TOKEN") from None
        if e.code == 404:
            raise BadInput(f"{hub_id}: no such model on the hub (HTTP 404)") from None
        raise Unreachable(f"{hub_id}: the hub answered HTTP {e.code}") from None
    except (urllib.error.URLError, TimeoutError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise Unreachable(f"{hub_id}: cannot reach the hub to fetch config.json ({reason}); "
                          "no network? pass a local model folder") from None
    return ConfigSource(_parse(text, url), "hub", url)


def locate(model: str) -> ConfigSource:
    """Find and parse config.json for a folder, a file, or a hub id."""
    path = Path(model).expanduser()
    if path.exists():
        return _read_local(path)
    if not HUB_ID.match(model) or model.startswith((".", "/", "~")):
        raise BadInput(f"{model}: no such file or folder (and not a hub id of the form org/name)")
    return _from_hf_cache(model) or _from_bundled(model) or _from_hub(model)
