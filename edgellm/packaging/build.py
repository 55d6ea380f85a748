"""``package(PackageRequest) -> PackageResult``: a checked bundle laid out for an app platform.

bundle (every file checked, read through the checked open files) -> optional GGUF split ->
the target's layout (targets.py) -> ``index.json`` (the download index: names, sizes, sha256,
URLs relative to ``base_url``) -> ``INTEGRATION.md`` -> ``edgellm-package.json``.  Written like
an export: a temporary folder renamed into place when complete; --force replaces only a package.
"""

from __future__ import annotations

import json
import shutil
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from edgellm import __version__
from edgellm.core.files import sha256_file
from edgellm.runtime.bundle import MANIFEST
from edgellm.errors import BadInput
from edgellm.packaging.targets import TARGETS, PackFile, safe_name

MARKER = "edgellm-package.json"
INDEX = "index.json"


@dataclass(frozen=True)
class PackageRequest:
    bundle: Path
    target: str                        # android, ios, linux
    out: Path | None = None
    base_url: str = ""
    split: int | None = None           # GGUF parts of at most this many bytes
    delivery: str = "auto"
    force: bool = False


@dataclass(frozen=True)
class PackageResult:
    folder: Path
    delivery: str
    files: list[dict]                  # the download index's entries
    total_bytes: int


def is_package(path: Path) -> bool:
    return (path / MARKER).is_file()


def _file(name: str, path: Path) -> PackFile:
    return PackFile(name, path, path.stat().st_size, sha256_file(path))


def _split(bundle, work: Path, max_bytes: int) -> list[PackFile]:
    """The bundle's files with its GGUF as split parts, and a manifest that lists the parts."""
    from edgellm.packaging.split import split_gguf

    m = bundle.manifest
    from edgellm.formats import entry

    if not entry(m["choice"]["format"], m["choice"].get("target", "cpu")).splittable:
        raise BadInput("--split applies to GGUF bundles (llama.cpp's split format)")
    parts = split_gguf(bundle.artifact, work, max_bytes)
    files = {n: meta for n, meta in m["files"].items() if n != m["artifact"]}
    out = [PackFile(n, (bundle.load_dir or bundle.folder) / n, meta["bytes"], meta["sha256"]) for n, meta in files.items()]
    for p in parts:
        f = _file(p.name, p)
        out.append(f)
        files[p.name] = {"sha256": f.sha256, "bytes": f.bytes}
    manifest = {**m, "artifact": parts[0].name, "split_from": m["artifact"], "files": dict(sorted(files.items()))}
    (work / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return out + [_file("manifest.json", work / "manifest.json")]


def _names(bundle) -> str:
    """The model's name for the package, once every bundle name the generated code and scripts
    embed has passed safe_name: a hostile bundle is refused before anything is written."""
    m, where = bundle.manifest, bundle.folder / MANIFEST
    for name in m["files"]:
        safe_name(name, f"{where}: files entry")
    if m.get("device") is not None:
        safe_name(m["device"], f"{where}: device")
    name = (m.get("model") or {}).get("name")
    if name:
        return safe_name(Path(str(name)).name, f"{where}: model.name", shown=name)
    return safe_name(bundle.folder.name, "the bundle folder's name (the manifest has no model.name)")


def _device_ram(name: str | None) -> int | None:
    from edgellm import devices
    from edgellm.errors import EdgeLLMError

    try:
        return devices.find(name).memory.ram if name else None
    except EdgeLLMError:
        return None


def package(req: PackageRequest, say: Callable[[str], None] = lambda s: None) -> PackageResult:
    from edgellm.exporters.package import staging
    from edgellm.runtime.bundle import open_bundle

    target = TARGETS.get(req.target)
    if target is None:
        raise BadInput(f"--target {req.target}: one of {', '.join(TARGETS)}")
    if req.delivery not in target.deliveries:
        raise BadInput(f"--delivery {req.delivery} is not one for {target.name}; it takes {', '.join(target.deliveries)}")
    bundle = open_bundle(Path(req.bundle))            # every file checked, read through the checked files
    try:
        m = bundle.manifest
        model = _names(bundle)
        peak = (m.get("prediction") or {}).get("peak_memory_bytes")     # a number the iOS note writes
        if peak is not None and (type(peak) is not int or peak < 0):
            raise BadInput(f"{bundle.folder / MANIFEST}: prediction.peak_memory_bytes {ascii(peak)[:80]} is not a byte count")
        out = req.out or Path(f"{bundle.folder.name}-{target.name}")
        if out.resolve() == bundle.folder.resolve():
            raise BadInput(f"{out}: the package cannot be written over its bundle")
        size = sum(f["bytes"] for f in m["files"].values())
        with staging(out, req.force, needed=2 * size, recognise=is_package, kind="package") as tmp:
            work = tmp / ".work"
            work.mkdir()
            if req.split:
                say(f"splitting the GGUF into parts of at most {req.split:,} bytes")
                files = _split(bundle, work, req.split)
            else:
                src = bundle.load_dir or bundle.folder
                files = [PackFile(n, src / n, meta["bytes"], meta["sha256"]) for n, meta in m["files"].items()]
                files.append(_file(MANIFEST, bundle.folder / MANIFEST))
            lay = target.layout(files, model, m["artifact"], m["choice"]["format"], req.delivery,
                                peak, _device_ram(m.get("device")), str(m.get("device")))
            say(f"laying out {len(files)} files for {target.name} ({lay.delivery})")
            for rel, f in lay.placed:
                dest = tmp / rel
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(f.source, dest)
            for rel, text in lay.extra.items():
                dest = tmp / rel
                dest.parent.mkdir(parents=True, exist_ok=True)
                dest.write_text(text)
                if rel.endswith(".sh"):
                    dest.chmod(0o755)
            shutil.rmtree(work)
            if lay.archive:
                index_files = [_tarball(tmp, lay.archive)]
            else:
                index_files = [(rel, f) for rel, f in lay.placed]
            entries = [{"name": Path(rel).name, "path": rel, "bytes": f.bytes, "sha256": f.sha256,
                        "url": req.base_url.rstrip("/") + "/" + Path(rel).name if req.base_url else Path(rel).name}
                       for rel, f in index_files]
            index = {"format": "edgellm-download-index", "version": 1, "model": model, "target": target.name,
                     "delivery": lay.delivery, "base_url": req.base_url, "total_bytes": sum(e["bytes"] for e in entries),
                     "files": entries}
            (tmp / INDEX).write_text(json.dumps(index, indent=2) + "\n")
            (tmp / "INTEGRATION.md").write_text("\n".join(lay.note) + "\n\nFirst-launch download: `index.json` lists "
                                                "every file with its size, sha256 and URL (relative to --base-url).\n")
            (tmp / MARKER).write_text(json.dumps({"edgellm": __version__, "target": target.name, "delivery": lay.delivery,
                                                  "bundle": bundle.folder.name, "split": req.split}, indent=2) + "\n")
        return PackageResult(out, lay.delivery, entries, index["total_bytes"])
    finally:
        bundle.close()


def _tarball(tmp: Path, folder: str) -> tuple[str, PackFile]:
    name = f"{folder}.tar.gz"
    # gzip's fastest level: model weights hardly compress (SmolLM2's F16 file to 0.886 of its
    # size at level 1, 0.886 at tarfile's default 9), and level 9 took 1.5x as long (4.0 s per
    # 64 MB on a 2-core Zen 3, against 2.7 s)
    with tarfile.open(tmp / name, "w:gz", compresslevel=1) as tar:
        tar.add(tmp / folder, arcname=folder)
    shutil.rmtree(tmp / folder)
    return name, _file(name, tmp / name)
