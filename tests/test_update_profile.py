"""`device measure --update-profile PROFILE` folds measurements into an existing profile, keeping
its comments (their sources), so the next plan for that device uses them."""

import tomllib
from pathlib import Path

from edgellm.devices.update import merge

BASE = """# my board
schema = 1
name = "board"

[memory]
ram = "8 GiB"                 # the spec sheet
bandwidth = "17 GB/s"         # LPDDR4X-4267, 32-bit
bandwidth_measured = "5 GB/s" # an old measurement

[cpu]
name = "A76"                  # the datasheet

[kernels]
"llama.cpp:Q8_0" = { decode_row_ns = 30, decode_weight_ps = 90, prefill_weight_ps = 40 }
"""
MEASURED = """schema = 1
[memory]
bandwidth_measured = "9.5 GB/s"
copy_measured = "7 GB/s"
[cpu]
fp32_measured = "40 GFLOPS"
[kernels]
"llama.cpp:Q4_0" = { decode_row_ns = 17, decode_weight_ps = 16, prefill_weight_ps = 6, source = "m" }
"""


def test_merge_replaces_measured_keys_keeps_the_rest_and_replaces_kernels():
    out = merge(BASE, MEASURED, "measured on board, today")
    data = tomllib.loads(out)
    assert data["memory"]["bandwidth_measured"] == "9.5 GB/s" and data["memory"]["copy_measured"] == "7 GB/s"
    assert data["cpu"]["fp32_measured"] == "40 GFLOPS" and data["memory"]["bandwidth"] == "17 GB/s"
    assert list(data["kernels"]) == ["llama.cpp:Q4_0"]
    assert "# LPDDR4X-4267, 32-bit" in out and "# the datasheet" in out and "# measured on board, today" in out


def test_update_a_shipped_profile_writes_the_users_copy_and_plans_use_it(run_cli, tmp_path):
    import os

    from edgellm import devices

    r = run_cli("device", "measure", "--update-profile", "rpi5-8gb", "--no-kernels", "--allow-busy", timeout=300)
    assert r.returncode == 0, r.stderr
    copy = Path(os.environ["EDGELLM_DEVICES_DIR"]) / "rpi5-8gb.toml"
    assert copy.is_file() and "measured on" in copy.read_text()
    assert devices.find("rpi5-8gb").source == str(copy)          # the user's copy shadows the shipped one
    from importlib import resources
    shipped = resources.files("edgellm.device_profiles").joinpath("rpi5-8gb.toml").read_text()
    assert "measured on" not in shipped



