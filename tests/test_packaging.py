"""The base install stays light: the runtime and the planner never import torch."""

import subprocess
import sys

CODE = """
import sys
import edgellm.runtime, edgellm.runtime.hostinfo, edgellm.runtime.membench
import edgellm.runtime.onnxrt, edgellm.runtime.llamacpp
import edgellm.exporters, edgellm.device_profiles
from edgellm.cli import main
assert main(["plan", "Qwen/Qwen2.5-0.5B-Instruct", "--device", "rpi5", "--json"]) == 0
heavy = sorted(m for m in ("torch", "transformers", "onnx", "gguf") if m in sys.modules)
assert not heavy, heavy
print("light")
"""


def test_runtime_and_planner_import_no_torch(tmp_path):
    r = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().endswith("light")
