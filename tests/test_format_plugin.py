"""A new output format is one registered class (issue 25, item 1): defined here, in the test only,
it is offered by the CLI, planned, exported by ``build_bundle``, opened by ``open_backend`` and
packaged for an app, without a line of edgellm changed for it.

The format, "toy", stores the model's shape as JSON, and its backend answers uniform logits: what
is under test is the registry's reach, not a runtime.
"""

from __future__ import annotations

import json
from collections import Counter
from enum import StrEnum
from pathlib import Path

import numpy as np
import pytest

from edgellm.formats.choice import BuildChoice, KVCache
from edgellm.formats import BuildFormat, register, unregister
from edgellm.formats.quality import Quality
from edgellm.formats.runtimes import LlamaCpp
from edgellm.exporters.stages import Opened, Writer, Written


class ToyQuant(StrEnum):
    F32 = "toy32"


class ToyBackend:
    """What ``open_backend`` hands back for a toy bundle."""

    def __init__(self, path: Path, n_ctx: int, threads: int | None):
        self.spec = json.loads(Path(path).read_text())
        self.n_ctx, self.threads, self.load_s = n_ctx, threads or 1, 0.0

    @classmethod
    def open(cls, path, n_ctx=2048, threads=None, scoring=False):
        return cls(path, n_ctx, threads)

    has_chat_template = False

    def tokenize(self, text: str, add_bos: bool = True) -> list[int]:
        return [ord(c) % self.spec["vocab"] for c in text]

    def prompt_ids(self, prompt: str, chat: bool) -> list[int]:
        return self.tokenize(prompt)

    def logits(self, tokens: list[int]) -> np.ndarray:
        return np.zeros((len(tokens), self.spec["vocab"]), np.float32)

    def stream(self, prompt, max_tokens, temperature, chat, seed=0):
        yield from ("x" for _ in range(max_tokens))


class ToyWriter(Writer):
    """The toy format's part of the export: the artifact only; staging, tokenizer, verification
    and manifest are the pipeline's stages."""

    def open(self, req, tokenizer):
        return Opened(None, None)

    def write(self, req, opened, calibrated, tmp, report):
        name = "model.toy"
        (tmp / name).write_text(json.dumps({"vocab": req.model.vocab, "layers": req.model.n_layers}))
        report.count(1, 1, "writing the toy file:")
        return Written(name)


class ToyRuntime(LlamaCpp):
    """The toy runtime's kernel rates: llama.cpp's, under its own name."""
    name = "toyrt"


class Toy(BuildFormat):
    key = "toy"
    format = "toy"
    runtime = "toyrt"
    runtime_model = ToyRuntime()
    exporter = ToyWriter
    backend = ToyBackend
    quant_enum = ToyQuant
    suffix = ".toy"
    families = frozenset({"llama"})
    quants = (ToyQuant.F32,)
    float_quants = (ToyQuant.F32,)

    def candidates(self, device):
        return [self.choice(ToyQuant.F32)]

    def leanest(self, device):
        return self.candidates(device)

    def choice(self, quant, device=None, block_size=None, calibrated=False):
        return BuildChoice(self.format, quant, KVCache.F32)

    def validate(self, c):
        super().validate(c)
        if c.kv_cache is not KVCache.F32:
            raise ValueError("toy keeps a float32 cache")

    def weights(self, model, c):
        nbytes = 4 * model.n_params
        return nbytes, nbytes, Counter({"toy32": len(model.tensors)})

    def file_bytes(self, model, c):
        return 4 * model.n_params

    def quality(self, model, c):
        return Quality(0.0, 1.0, 1.0, "toy: float32, lossless")

    def tolerance(self, quant):
        return 1e-3


@pytest.fixture
def toy(tmp_path):
    """The toy format registered (its runtime with it), and a device profile that lists the
    runtime; all taken back afterwards."""
    from edgellm.core.names import FORMAT_NAMES, RUNTIME_NAMES
    from edgellm.formats.runtimes import RUNTIMES

    register(Toy)
    base = (Path(__file__).resolve().parent.parent / "device_profiles" / "laptop-x86-16gb.toml").read_text()
    profile = tmp_path / "toy-laptop.toml"
    profile.write_text(base.replace('name = "laptop-x86-16gb"', 'name = "toy-laptop"')
                       .replace('runtimes = ["llama.cpp", "onnxruntime"]', 'runtimes = ["llama.cpp", "onnxruntime", "toyrt"]')
                       .replace('aliases = ["laptop"]', "aliases = []"))
    yield profile
    unregister("toy")
    RUNTIMES.pop("toyrt", None)
    RUNTIME_NAMES.discard("toyrt")
    FORMAT_NAMES.discard("toy")


def test_a_format_defined_in_a_test_is_planned_exported_opened_and_packaged(toy, tiny, tmp_path, capsys):
    from edgellm.cli import main
    from edgellm.runtime.backend import open_backend

    model = tiny("llama")
    assert main(["plan", str(model), "--device", str(toy), "--format", "toy", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["winner"]["label"] == "toy toy32"

    out = tmp_path / "bundle"
    assert main(["export", str(model), "--device", str(toy), "--format", "toy", "--no-verify", "-o", str(out)]) == 0
    capsys.readouterr()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["choice"]["format"] == "toy" and manifest["artifact"] == "model.toy"

    bundle, backend = open_backend(out)
    assert isinstance(backend, ToyBackend) and backend.spec["vocab"] > 0
    bundle.close()

    pkg = tmp_path / "pkg"
    assert main(["package", str(out), "--target", "linux", "-o", str(pkg)]) == 0
    import tarfile

    tarball = next(pkg.rglob("*.tar.gz"))
    with tarfile.open(tarball) as t:
        assert any(m.name.endswith("/model.toy") for m in t.getmembers())
    app = tmp_path / "app"
    assert main(["package", str(out), "--target", "android", "-o", str(app)]) == 0
    assert "Runtime: toyrt. Load `" in (app / "INTEGRATION.md").read_text()     # the format's own lines


def test_a_format_that_does_not_support_a_family_says_so_before_any_work(toy, tiny, capsys):
    from edgellm.cli import main

    assert main(["plan", str(tiny("gpt2")), "--device", str(toy), "--format", "toy"]) == 2
    assert "toy does not support 'gpt2'" in capsys.readouterr().err
