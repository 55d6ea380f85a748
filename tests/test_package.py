"""`edgellm package BUNDLE --target android|ios|linux`: layouts, store limits, the download index,
llama.cpp's split format, and the iOS memory note."""

import hashlib
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

EXE = str(Path(sys.executable).with_name("edgellm"))


def _export(tiny, out, *extra):
    r = subprocess.run([EXE, "export", str(tiny("llama")), "--quant", "Q8_0", "--no-verify", "-o", str(out), *extra],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return out


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, tiny):
    return _export(tiny, tmp_path_factory.mktemp("pkg") / "tiny-gguf", "--device", "rpi5")


def ident(bundle: Path) -> str:
    from edgellm.packaging.targets import _ident
    return _ident(json.loads((bundle / "manifest.json").read_text())["model"]["name"])


def _index_matches(pkg: Path):
    index = json.loads((pkg / "index.json").read_text())
    for e in index["files"]:
        data = (pkg / e["path"]).read_bytes()
        assert len(data) == e["bytes"] and hashlib.sha256(data).hexdigest() == e["sha256"]
    assert index["total_bytes"] == sum(e["bytes"] for e in index["files"])
    return index


def test_android_small_model_goes_in_the_app_module_assets(run_cli, bundle, tmp_path):
    r = run_cli("package", str(bundle), "--target", "android", "-o", str(tmp_path / "p"), "--base-url", "https://cdn.example/m/")
    assert r.returncode == 0, r.stderr
    pkg = tmp_path / "p"
    assets = pkg / f"app/src/main/assets/edgellm/{ident(bundle)}"
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert sorted(p.name for p in assets.iterdir()) == sorted([*manifest["files"], "manifest.json"])
    index = _index_matches(pkg)
    assert index["delivery"] == "base" and all(e["url"] == f"https://cdn.example/m/{e['name']}" for e in index["files"])
    note = (pkg / "INTEGRATION.md").read_text()
    assert manifest["artifact"] in note and "noCompress" in note and "200 MB" in note


def test_android_asset_packs_and_their_limits(bundle, tmp_path, monkeypatch):
    from edgellm.errors import BadInput
    from edgellm.packaging import PackageRequest, limits, package

    r = package(PackageRequest(bundle, "android", tmp_path / "p", delivery="fast-follow"))
    m = ident(bundle)
    gradle = (tmp_path / f"p/{m}_model/build.gradle.kts").read_text()
    assert 'deliveryType.set("fast-follow")' in gradle and f'packName.set("{m}_model")' in gradle
    assert (tmp_path / f"p/{m}_model/src/main/assets/edgellm/{m}/manifest.json").is_file()
    assert r.delivery == "fast-follow"
    monkeypatch.setattr(limits, "PLAY_BASE_MODULE", 1000)
    with pytest.raises(BadInput, match=r"android base module: the model is 1.\d+ MB, over the 1,000 B limit"):
        package(PackageRequest(bundle, "android", tmp_path / "q", delivery="base"))
    r = package(PackageRequest(bundle, "android", tmp_path / "q"))     # auto: too big for base -> a pack
    assert r.delivery == "install-time"
    monkeypatch.setattr(limits, "PLAY_ASSET_PACK", 100_000)
    with pytest.raises(BadInput, match="over the 100,000 B limit .*per-pack limit.*--split"):
        package(PackageRequest(bundle, "android", tmp_path / "s", delivery="on-demand"))


def test_ios_folder_and_memory_note(run_cli, bundle, tmp_path):
    from edgellm.packaging.targets import Ios, PackFile

    r = run_cli("package", str(bundle), "--target", "ios", "-o", str(tmp_path / "p"))
    assert r.returncode == 0, r.stderr
    assert (tmp_path / f"p/ios/{ident(bundle)}/manifest.json").is_file()
    _index_matches(tmp_path / "p")
    assert "not an iPhone or iPad" in (tmp_path / "p/INTEGRATION.md").read_text()
    f = [PackFile("m.gguf", Path("x"), 10, "0" * 64)]
    gib = 1 << 30
    big = "\n".join(Ios().layout(f, "m", "m.gguf", "gguf", "auto", 4 * gib, 8 * gib, "iphone-15-pro-8gb").note)
    assert "com.apple.developer.kernel.increased-memory-limit" in big and "4 GiB" in big and "3 GiB" in big
    small = "\n".join(Ios().layout(f, "m", "m.gguf", "gguf", "auto", 1 * gib, 8 * gib, "iphone-15-pro-8gb").note)
    assert "no entitlement needed" in small


def test_linux_tarball_runs_with_the_light_runtime(run_cli, bundle, tmp_path):
    r = run_cli("package", str(bundle), "--target", "linux", "-o", str(tmp_path / "p"), "--json")
    assert r.returncode == 0, r.stderr
    m = ident(bundle)
    assert json.loads(r.stdout)["files"][0]["name"] == f"{m}.tar.gz"
    _index_matches(tmp_path / "p")
    with tarfile.open(tmp_path / f"p/{m}.tar.gz") as tar:
        tar.extractall(tmp_path / "x", filter="data")
    run_sh = tmp_path / f"x/{m}/run.sh"
    assert os.access(run_sh, os.X_OK) and "pip install edgellm" in (tmp_path / f"x/{m}/README.md").read_text()
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    out = subprocess.run([str(run_sh), "-p", "def ", "--raw", "--max-tokens", "4"], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr


def test_split_gguf_in_llama_cpps_format_loads_and_scores_the_same(run_cli, tiny, tmp_path):
    import numpy as np
    from llama_cpp import Llama

    b = _export(tiny, tmp_path / "big", "--device", "rpi5", "--quant", "F16")
    r = run_cli("package", str(b), "--target", "android", "--delivery", "download", "--split", "1MB", "-o", str(tmp_path / "p"))
    assert r.returncode == 0, r.stderr
    index = _index_matches(tmp_path / "p")
    parts = sorted(e["name"] for e in index["files"] if e["name"].endswith(".gguf"))
    assert len(parts) >= 2 and parts[0].endswith("-00001-of-%05d.gguf" % len(parts))
    assert all((tmp_path / "p/download" / p).stat().st_size <= 1_000_000 + 200_000 for p in parts)
    whole = next(b.glob("*.gguf"))
    a = Llama(str(whole), n_ctx=32, logits_all=True, verbose=False)
    s = Llama(str(tmp_path / "p/download" / parts[0]), n_ctx=32, logits_all=True, verbose=False)
    a.eval([1, 2, 3, 4])
    s.eval([1, 2, 3, 4])
    assert np.array_equal(np.array(a.scores[:4]), np.array(s.scores[:4]))
    # the package's folder is itself a bundle (its manifest lists the parts): verify runs it
    assert run_cli("verify", str(tmp_path / "p/download")).returncode == 0


def test_force_replaces_only_a_package(run_cli, bundle, tmp_path):
    out = tmp_path / "p"
    out.mkdir()
    (out / "mine.txt").write_text("x")
    r = run_cli("package", str(bundle), "--target", "linux", "-o", str(out), "--force")
    assert r.returncode == 2 and "is not an edgellm package" in r.stderr and (out / "mine.txt").exists()
    out2 = tmp_path / "q"
    assert run_cli("package", str(bundle), "--target", "linux", "-o", str(out2)).returncode == 0
    assert run_cli("package", str(bundle), "--target", "linux", "-o", str(out2), "--force").returncode == 0
    r = run_cli("package", str(bundle), "--target", "android", "--delivery", "bundled", "-o", str(tmp_path / "z"))
    assert r.returncode == 2 and "--delivery bundled is not one for android" in r.stderr
