"""`edgellm report`: one self-contained HTML page with inline SVG charts, rendered in a real
headless Chromium (Debian's package; .ci/run installs it)."""

import shutil
import subprocess
import zlib
from pathlib import Path

from conftest import CORPUS, write_bundle

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def _bundle(tmp_path, name, size, kld, decode):
    return write_bundle(tmp_path / name, {"m.gguf": (CORPUS / "valid.gguf").read_bytes()[:size]}, "m.gguf",
                        device="rpi5-8gb", verification={"held_out": {"mean_kld": kld}},
                        prediction={"peak_memory_bytes": 60 << 20, "prefill_tokens_per_s": 900.0,
                                    "decode_tokens_per_s": decode, "context": 128, "file_bytes": size})


def _inputs(run_cli, tmp_path):
    a = _bundle(tmp_path, "tiny-Q8_0", 30000, 0.001, 300.0)
    b = _bundle(tmp_path, "tiny-Q4_K_M", 20000, 0.010, 450.0)
    c = _bundle(tmp_path, "tiny-Q4_0-bad", 21000, 0.030, 460.0)        # bigger and worse than Q4_K_M
    real = write_bundle(tmp_path / "tiny-real", {"m.gguf": (CORPUS / "valid.gguf").read_bytes()}, "m.gguf",
                        device="rpi5-8gb", prediction={"peak_memory_bytes": 60 << 20, "prefill_tokens_per_s": 900.0,
                                                       "decode_tokens_per_s": 400.0, "context": 128})
    r = run_cli("profile", str(real), "--prompt-tokens", "16", "--gen-tokens", "8", "--repeats", "2",
                "--depths", "0,32,64", "--sustained", "2", "--json")
    assert r.returncode == 0, r.stderr
    (tmp_path / "real.json").write_text(r.stdout)
    return [a, b, c, real, tmp_path / "real.json"]


def test_report_is_self_contained_and_renders_in_chromium(run_cli, tmp_path):
    inputs = _inputs(run_cli, tmp_path)
    out = tmp_path / "report.html"
    r = run_cli("report", *map(str, inputs), "-o", str(out))
    assert r.returncode == 0, r.stderr
    page = out.read_text()
    assert "<script" not in page and "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert "https://" not in page and page.count("<svg") >= 5
    assert page.count('class="pareto"') == 2 and page.count('class="point"') == 1   # Q4_0-bad is dominated
    dom = subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={tmp_path / 'chr'}", "--dump-dom", out.as_uri()],
                         capture_output=True, text=True, timeout=120).stdout
    assert "tiny-Q4_K_M" in dom and "decode against context depth" in dom and "sustained decode" in dom
    assert 'id="headline"' in dom and "450.0" in dom            # a planned figure, as the table shows it
    shot = tmp_path / "shot.png"
    subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={tmp_path / 'chr2'}", f"--screenshot={shot}",
                    "--window-size=1200,1400", out.as_uri()], capture_output=True, timeout=120)
    assert _distinct_colours(shot) > 8                            # charts drawn, not a blank page


def _distinct_colours(png: Path) -> int:
    """Colours in a PNG's first rows (a tiny decoder: 8-bit RGB(A), filter bytes ignored)."""
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, width, channels = 8, b"", 0, 4
    while pos < len(data):
        n = int.from_bytes(data[pos:pos + 4], "big")
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + n]
        if kind == b"IHDR":
            width, channels = int.from_bytes(body[:4], "big"), {2: 3, 6: 4}[body[9]]
        elif kind == b"IDAT":
            idat += body
        pos += 12 + n
    raw = zlib.decompress(idat)
    stride = width * channels + 1
    return len({raw[i:i + channels] for row in range(0, min(len(raw), stride * 600), stride)
                for i in range(row + 1, row + stride - channels, channels * 7)})


def test_bad_report_input_is_one_line(run_cli, tmp_path):
    (tmp_path / "x.json").write_text("{}")
    r = run_cli("report", str(tmp_path / "x.json"), "-o", str(tmp_path / "r.html"))
    assert r.returncode == 2 and "not a profile JSON" in r.stderr and r.stderr.count("\n") == 1


def test_names_from_strangers_are_escaped(run_cli, tmp_path):
    b = _bundle(tmp_path, "evil<script>alert(1)</script>", 20000, 0.01, 100.0)
    r = run_cli("report", str(b), "-o", str(tmp_path / "r.html"))
    assert r.returncode == 0 and "<script>" not in (tmp_path / "r.html").read_text()
