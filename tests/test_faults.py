"""Fault injection: signals at several points of an export, a full disk at each kind of write, and
a bundle file changing while `run` uses it.  After each, nothing half-written looks complete, and
the user sees one line."""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import CORPUS, stalled, write_bundle
from edgellm.errors import EXIT_CRASHED, EdgeLLMError

EXE = str(Path(sys.executable).with_name("edgellm"))


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def export_until(tiny, tmp_path, stage: str, sig: int, after: bool = False):
    """Start a verified export, send ``sig`` while it is in ``stage`` (or, with ``after``, once the
    command has finished and the interpreter is tearing down)."""
    out = tmp_path / "out"
    p = stalled(stage, ["export", str(tiny("llama")), "--device", "rpi5", "--quant", "Q4_K_M", "-o", str(out)],
                after=after, cwd=tmp_path)
    seen = []
    for line in p.stderr:
        seen.append(line)
        if stage in line:
            p.send_signal(sig)
            break
    rest = p.stderr.read()
    p.wait(timeout=300)
    return p.returncode, "".join(seen) + rest, out


@pytest.mark.parametrize("stage", ["[1/3] converting", "[2/3] verifying"])
@pytest.mark.parametrize("sig,code,says", [(signal.SIGINT, 130, "interrupted"),
                                           (signal.SIGTERM, 143, "stopped by SIGTERM")])
def test_a_signal_mid_export_leaves_nothing(tiny, tmp_path, stage, sig, code, says):
    rc, err, out = export_until(tiny, tmp_path, stage, sig)
    assert rc == code, err
    assert err.strip().splitlines()[-1] == f"edgellm: {says}"
    assert not out.exists() and leftovers(tmp_path) == []


def test_a_signal_after_the_export_finished_keeps_its_result(tiny, tmp_path):
    rc, err, out = export_until(tiny, tmp_path, "<teardown>", signal.SIGTERM, after=True)
    assert rc == 0, err
    assert "Traceback" not in err and "stopped" not in err
    assert (out / "manifest.json").exists() and leftovers(tmp_path) == []


def test_after_sigkill_the_next_run_removes_what_the_killed_one_left(tiny, tmp_path):
    rc, err, out = export_until(tiny, tmp_path, "[2/3] verifying", signal.SIGKILL)
    assert rc == -signal.SIGKILL
    stale = leftovers(tmp_path)
    assert any(".partial-" in n for n in stale), stale          # SIGKILL cannot be cleaned up after
    r = subprocess.run([EXE, "export", str(tiny("llama")), "--device", "rpi5", "--quant", "Q8_0", "--no-verify",
                        "-o", str(out)], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert r.returncode == 0, r.stderr
    assert leftovers(tmp_path) == [] and (out / "manifest.json").exists()


def test_a_temporary_folder_of_a_live_process_is_left_alone(tiny, tmp_path):
    from edgellm.core.output import remove_stale

    out = tmp_path / "out"
    mine = tmp_path / f".out.partial-{os.getpid()}"
    dead = tmp_path / ".out.partial-4194000"                # above any PID in use here
    nested = tmp_path / "..out.trial-4194000-0.partial-4194001"
    other = tmp_path / ".other.partial-4194000"              # another output's: not ours to judge
    for d in (mine, dead, nested, other):
        d.mkdir()
    removed = remove_stale(out)
    assert sorted(p.name for p in removed) == sorted([dead.name, nested.name])
    assert mine.exists() and other.exists()


# -- disk full at each kind of write -----------------------------------------------------------
def _gguf_request(tiny, tmp_path):
    from edgellm import models
    from edgellm.exporters.gguf.export import ExportRequest
    from edgellm.formats.choice import BuildChoice

    folder = tiny("llama")
    return ExportRequest(model_dir=folder, model=models.load_config(str(folder)),
                         choice=BuildChoice("gguf", "Q8_0", "f16"), out=tmp_path / "out", device="rpi5-8gb",
                         verify=False, prediction={"file_bytes": 2 << 20})


def _onnx_request(tiny, tmp_path):
    import dataclasses

    from edgellm.formats.choice import BuildChoice
    return dataclasses.replace(_gguf_request(tiny, tmp_path), choice=BuildChoice("onnx", "fp32", "f32"))


def _full(*a, **k):
    raise OSError(28, "No space left on device")


@pytest.mark.parametrize("where", ["gguf model", "onnx data", "manifest"])
def test_disk_full_at_each_write_is_one_line_and_leaves_nothing(tiny, tmp_path, monkeypatch, where):
    from edgellm.exporters import package
    from edgellm.exporters.gguf import export as gguf_export
    from edgellm.exporters.onnx import export as onnx_export
    from edgellm.exporters.onnx import weights

    if where == "gguf model":
        from edgellm.exporters.gguf import write
        monkeypatch.setattr(write, "_encode", _full)
        run = lambda: gguf_export.export_gguf(_gguf_request(tiny, tmp_path))      # noqa: E731
    elif where == "onnx data":
        monkeypatch.setattr(weights.ExternalData, "add", _full)
        run = lambda: onnx_export.export_onnx(_onnx_request(tiny, tmp_path))      # noqa: E731
    else:
        real = package.Path.write_text

        def write_text(self, *a, **k):
            if self.name == "manifest.json":
                _full()
            return real(self, *a, **k)
        monkeypatch.setattr(package.Path, "write_text", write_text)
        run = lambda: gguf_export.export_gguf(_gguf_request(tiny, tmp_path))      # noqa: E731
    with pytest.raises(EdgeLLMError) as e:
        run()
    assert e.value.message.startswith("no space left on ") and "needs about 2 MiB, has " in e.value.message
    assert list(tmp_path.iterdir()) == []


def test_a_real_full_filesystem_mid_write(tiny, tmp_path):
    """The preflight is fooled (a prediction far too small), so the disk really fills mid-write."""
    import textwrap

    fs = tmp_path / "fs"
    fs.mkdir()
    code = textwrap.dedent(f"""
        import dataclasses, sys
        from pathlib import Path
        from edgellm import models
        from edgellm.errors import EdgeLLMError
        from edgellm.exporters.gguf.export import ExportRequest, export_gguf
        from edgellm.formats.choice import BuildChoice
        folder = Path({str(tiny("llama"))!r})
        req = ExportRequest(model_dir=folder, model=models.load_config(str(folder)),
                            choice=BuildChoice("gguf", "F16", "f16"), out=Path({str(fs)!r}) / "out",
                            device="rpi5-8gb", verify=False, prediction={{"file_bytes": 1}})
        try:
            export_gguf(req)
        except EdgeLLMError as e:
            print(e.message)
            sys.exit(e.exit_code)
    """)
    (tmp_path / "job.py").write_text(code)
    script = f"mount -t tmpfs -o size=2m tmpfs {fs} && exec {sys.executable} {tmp_path / 'job.py'}"
    r = subprocess.run(["unshare", "--mount", "--map-root-user", "sh", "-c", script], capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 1, r.stderr[-800:]
    assert r.stdout.startswith(f"no space left on {fs}"), r.stdout


# -- a bundle file changing during `run` -------------------------------------------------------
def _long_profile(bundle: Path):
    return subprocess.Popen([EXE, "profile", str(bundle), "--prompt-tokens", "32", "--gen-tokens", "64",
                             "--repeats", "400"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_running(p, bundle_dir: Path):
    """Until the profile has loaded its model (its private folder of checked files exists)."""
    import tempfile
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if any(Path(tempfile.gettempdir()).glob(f"edgellm-run-{d}-*") for d in _children(p.pid)):
            time.sleep(1.0)
            return
        assert p.poll() is None, p.stderr.read()
        time.sleep(0.05)
    raise AssertionError("the profile never started")


def _children(pid: int) -> list[int]:
    out = [pid]
    try:
        out += [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        pass
    return out


def test_a_model_file_truncated_while_running_is_one_clear_line(tmp_path):
    b = write_bundle(tmp_path / "b", {"m.gguf": (CORPUS / "valid.gguf").read_bytes()}, "m.gguf")
    p = _long_profile(b)
    _wait_running(p, b)
    os.truncate(b / "m.gguf", 100)
    _, err = p.communicate(timeout=120)
    assert p.returncode == EXIT_CRASHED, err
    assert err.count("\n") == 1 and "the runtime crashed (bus error: a model file was truncated" in err


def test_a_model_file_swapped_while_running_does_not_change_the_run(tmp_path):
    b = write_bundle(tmp_path / "b", {"m.gguf": (CORPUS / "valid.gguf").read_bytes()}, "m.gguf")
    p = subprocess.Popen([EXE, "profile", str(b), "--prompt-tokens", "32", "--gen-tokens", "64", "--repeats", "200"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_running(p, b)
    shutil.copy(CORPUS / "gguf" / "rms-eps-nan.gguf", tmp_path / "evil.gguf")
    os.replace(tmp_path / "evil.gguf", b / "m.gguf")          # would abort llama.cpp if it were read
    out, err = p.communicate(timeout=300)
    assert p.returncode == 0, err
    assert "decode" in out
