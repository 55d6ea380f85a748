import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(autouse=True, scope="session")
def signals_as_in_a_terminal():
    """Started as a background job (``nohup pytest &``), this process inherits SIGINT and SIGHUP
    ignored, and every command a test starts would too (an ignored signal stays ignored across
    exec), so the signal tests would test nothing.  Handled here, they reach children as default."""
    import signal

    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGHUP, lambda *a: None)
    yield


@pytest.fixture(autouse=True)
def isolated_env(tmp_path, monkeypatch):
    """No test sees the developer's own profiles or HF cache, and none touches the network."""
    monkeypatch.setenv("EDGELLM_DEVICES_DIR", str(tmp_path / "user-devices"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture
def run_cli(tmp_path):
    """Run the installed `edgellm` console script the way a user does."""
    def run(*args, **kw):
        env = {**os.environ, **kw.pop("env", {})}
        exe = Path(sys.executable).with_name("edgellm")
        return subprocess.run([str(exe), *args], capture_output=True, text=True, env=env,
                              cwd=kw.pop("cwd", tmp_path), timeout=kw.pop("timeout", 300))
    return run


@pytest.fixture
def cli(capsys):
    """The CLI's ``main`` in this process, answering like ``run_cli`` (returncode, stdout, stderr):
    for the many checks that bad input stops with one line, without an interpreter start each."""
    import signal

    from edgellm.cli import main

    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGHUP)}
    from transformers.utils import logging as hf_logging      # as the CLI's own process has them: off
    hf_logging.disable_progress_bar()

    def run(*args, env=None, cwd=None, timeout=None):
        capsys.readouterr()
        old_env, old_cwd = dict(os.environ), os.getcwd()
        os.environ.update(env or {})
        if cwd is not None:
            os.chdir(cwd)
        try:
            code = main([str(a) for a in args])
        except SystemExit as e:                  # argparse's own errors
            code = e.code
        finally:
            os.chdir(old_cwd)
            os.environ.clear()
            os.environ.update(old_env)
            for sig, handler in saved.items():
                signal.signal(sig, handler)
        out = capsys.readouterr()
        return subprocess.CompletedProcess(args, code, out.out, out.err)
    return run


@pytest.fixture
def model_dir(tmp_path):
    """Write a config.json into a fresh folder and return the folder."""
    def make(cfg: dict, name: str = "model") -> Path:
        d = tmp_path / name
        d.mkdir()
        (d / "config.json").write_text(json.dumps(cfg))
        return d
    return make


@pytest.fixture(scope="session")
def tokenizer():
    from edgellm.exporters.demo_models import train_tokenizer
    return train_tokenizer(vocab_size=768, limit_bytes=1 << 20)


@pytest.fixture(scope="session")
def tiny(tmp_path_factory, tokenizer):
    """Build (once) and return the folder of a tiny random-weight model: tiny("llama")."""
    from edgellm.exporters.demo_models import build_model
    built = {}

    def get(arch: str, **kw) -> Path:
        key = (arch, json.dumps(kw, sort_keys=True))
        if key not in built:
            folder = tmp_path_factory.mktemp(f"tiny-{arch}")
            built[key] = build_model(arch, folder, tokenizer, **kw)
        return built[key]
    return get


@pytest.fixture(scope="session")
def spm_tokenizer(tmp_path_factory):
    from edgellm.exporters.demo_models import train_spm_tokenizer
    return train_spm_tokenizer(tmp_path_factory.mktemp("spm"))


def write_bundle(folder: Path, files: dict[str, bytes], artifact: str, choice: dict | None = None,
                 **extra) -> Path:
    """A bundle folder as an exporter would write it (right checksums), around any bytes."""
    import hashlib

    folder.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (folder / name).write_bytes(data)
    manifest = {"format": "edgellm-bundle", "version": 1, "artifact": artifact,
                "choice": choice or {"version": 2, "format": "gguf", "quant": "F16", "kv_cache": "f16",
                                     "block_size": None, "calibrated": False, "target": "cpu",
                                     "int8_levels": None},
                "files": {n: {"sha256": hashlib.sha256(d).hexdigest(), "bytes": len(d)} for n, d in files.items()},
                **extra}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


CORPUS = Path(__file__).parent / "corpus"


@pytest.fixture
def small_fs(tmp_path):
    """Run `edgellm ARGS` with a fresh tmpfs of ``size`` mounted at ``{fs}`` (in the arguments),
    in a private mount namespace (unshare: no root needed where user namespaces are allowed):
    a real full or read-only filesystem, not a simulated one."""
    import shlex

    def run(args: list[str], size: str = "1m", read_only: bool = False, timeout: int = 300):
        fs = tmp_path / "small-fs"
        fs.mkdir(exist_ok=True)
        exe = Path(sys.executable).with_name("edgellm")
        argv = " ".join(shlex.quote(a.replace("{fs}", str(fs))) for a in args)
        opts = f"size={size}" + (",ro" if read_only else "")
        script = f"mount -t tmpfs -o {opts} tmpfs {shlex.quote(str(fs))} && exec {shlex.quote(str(exe))} {argv}"
        return subprocess.run(["unshare", "--mount", "--map-root-user", "sh", "-c", script],
                              capture_output=True, text=True, timeout=timeout, cwd=tmp_path)
    return run


# `stalled` runs the command under this wrapper: it holds the process at the first progress line
# that names the stage (sleeping inside the stage's own callback), so a signal lands mid-stage
# however fast the machine is (a fixed delay after the line raced a quick verification on a fast
# CI machine).
STALL = """
import sys, time
stage, after = sys.argv.pop(1), sys.argv.pop(1) == "after"

class Stall:
    def __init__(self, stream):
        self.stream = stream
    def write(self, text):
        n = self.stream.write(text)
        if stage in text:
            self.stream.flush()
            time.sleep(120)
        return n
    def __getattr__(self, name):
        return getattr(self.stream, name)

if not after:
    sys.stderr = Stall(sys.stderr)          # before edgellm binds its progress stream
from edgellm.cli import main
code = main()
if after:
    print(stage, file=sys.stderr, flush=True)
    time.sleep(3)                           # the interpreter's teardown, stretched
raise SystemExit(code)
"""


def stalled(stage: str, args: list[str], after: bool = False, **popen_kw):
    """``edgellm *args`` held at its first stderr line naming ``stage`` (with ``after``: once the
    command has returned, for 3 s of teardown); stderr is a text pipe, read it to the line."""
    return subprocess.Popen([sys.executable, "-c", STALL, stage, "after" if after else "in", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen_kw)
