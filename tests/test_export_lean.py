"""The plain GGUF export's hot path stays lean (issue 25, item 7): no torch import without
calibration or verification (1.7 s and about 200 MiB of RSS on a 0.5B export), one pool of
encoder threads for the whole file."""

import subprocess
import sys

PROBE = """
import sys, threading
from edgellm.cli import main
code = main(sys.argv[1:])
print('torch' in sys.modules, sum(t.name.startswith('edgellm-encode') for t in threading.enumerate()))
raise SystemExit(code)
"""


def test_a_plain_gguf_export_imports_no_torch_and_reuses_its_threads(tiny, tmp_path):
    r = subprocess.run([sys.executable, "-c", PROBE, "export", str(tiny("llama")), "--device", "rpi5",
                        "--quant", "Q4_0", "--no-verify", "--threads", "2", "-o", str(tmp_path / "b")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    torch_loaded, encoders = r.stdout.split()[-2:]
    assert torch_loaded == "False"
    assert int(encoders) <= 2
