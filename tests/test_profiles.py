import re
import tomllib
from importlib import resources
from pathlib import Path

import pytest

from edgellm import devices
from edgellm.errors import BadInput

REQUIRED = {"rpi5-8gb", "rpi5-4gb", "rpi4-4gb", "jetson-orin-nano-8gb", "laptop-x86-16gb",
            "macbook-m2-8gb", "android-sd8gen3-12gb", "android-midrange-6gb", "iphone-15-pro-8gb"}
HARDWARE_KEYS = {"ram", "app_share", "bandwidth", "bandwidth_measured", "copy_measured", "cores_big",
                 "cores_little", "freq", "isa", "fp32_peak", "fp32_measured", "compute", "weight_types"}


def bundled_files():
    return sorted(Path(str(f)) for f in resources.files("edgellm.device_profiles").iterdir()
                  if f.name.endswith(".toml"))


def test_every_required_profile_ships_and_validates():
    names = {p.name for p in devices.all_profiles()}
    assert REQUIRED <= names


@pytest.mark.parametrize("path", bundled_files(), ids=lambda p: p.stem)
def test_every_hardware_figure_cites_a_source(path):
    for line in path.read_text().splitlines():
        key = line.split("=")[0].strip()
        if key in HARDWARE_KEYS:
            assert "#" in line and len(line.split("#", 1)[1].strip()) > 10, f"{path.name}: {line!r} has no source"


def test_the_npu_profile_declares_qnn():
    p = devices.find("android-sd8gen3-12gb")
    npu = [a for a in p.accelerators if a.kind == "npu"]
    assert npu and npu[0].provider == "qnn" and npu[0].runtime == "onnxruntime"
    assert devices.find("android-midrange-6gb").accelerators == ()


def test_aliases_and_suggestions():
    assert devices.find("rpi5").name == "rpi5-8gb"
    with pytest.raises(BadInput, match="did you mean rpi5-8gb"):
        devices.find("rpi5-8g")


def test_unknown_device_without_close_match_lists_count():
    with pytest.raises(BadInput, match="'edgellm devices' lists the"):
        devices.find("toaster")


def write_profile(tmp_path, mutate, name="board"):
    text = (bundled_files()[0].parent / "rpi5-8gb.toml").read_text()
    text = text.replace('name = "rpi5-8gb"', f'name = "{name}"')
    text = mutate(text)
    path = tmp_path / f"{name}.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("mutate,message", [
    (lambda t: t.replace('bandwidth = "17.1 GB/s"', 'bandwidth = "17.1 GB"'), r"memory\.bandwidth: expected a bandwidth"),
    (lambda t: t.replace("cores_big = 4", "cores_big = 4.5"), r"cpu\.cores_big: expected a whole number"),
    (lambda t: t.replace("[cpu]", "[cpu]\nturbo = true"), r"cpu\.turbo: unknown key"),
    (lambda t: re.sub(r'ram = .*\n', "", t), r"memory\.ram: missing required key"),
    (lambda t: t.replace("app_share = 0.75", "app_share = 75"), r"memory\.app_share: expected a fraction"),
    (lambda t: t.replace('"dotprod"]', '"dotprod", "avx9000"]'), r"cpu\.isa: expected one of"),
    (lambda t: t.replace("schema = 1", "schema = 2"), r"schema: version 2 is not supported"),
    (lambda t: t.replace("[memory]", "[memory\n"), r"not valid TOML"),
])
def test_validation_errors_name_file_and_key(tmp_path, mutate, message):
    path = write_profile(tmp_path, mutate)
    with pytest.raises(BadInput, match=message) as e:
        devices.load_file(path)
    assert str(path) in e.value.message


def test_user_profiles_are_found_and_shadow_bundled(tmp_path, monkeypatch):
    user = tmp_path / "user-devices"
    user.mkdir()
    write_profile(user, lambda t: t.replace("cores_big = 4", "cores_big = 2"), name="rpi5-8gb")
    write_profile(user, lambda t: t.replace('aliases = ["rpi5"]', 'aliases = []'), name="my-board")
    assert devices.find("my-board").source.endswith("my-board.toml")
    assert devices.find("rpi5-8gb").cpu.cores_big == 2
    assert len([p for p in devices.all_profiles() if p.name == "rpi5-8gb"]) == 1


def test_user_profile_name_must_match_file(tmp_path):
    user = tmp_path / "user-devices"
    user.mkdir()
    path = write_profile(user, lambda t: t, name="board")
    path.rename(user / "other.toml")
    with pytest.raises(BadInput, match="must match the file name"):
        devices.all_profiles()


def test_profile_by_path(tmp_path):
    path = write_profile(tmp_path, lambda t: t, name="mine")
    assert devices.find(str(path)).name == "mine"
    with pytest.raises(BadInput, match="no such device profile file"):
        devices.find(str(tmp_path / "missing.toml"))


def test_memory_budget_defaults_to_ram_share():
    p = devices.find("rpi5-8gb")
    assert p.memory_budget == int(8 * 2**30 * 0.75)
    assert p.memory.effective_bandwidth == pytest.approx(0.6 * 17.1e9)
    assert tomllib.loads((bundled_files()[0].parent / "rpi5-8gb.toml").read_text())["name"] == "rpi5-8gb"
