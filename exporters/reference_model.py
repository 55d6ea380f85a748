"""edgellm's reference model: a small llama trained here, so quality numbers mean something.

Quantization loss measured on random weights says little (their next-token distributions are near
flat); a model that has learned real text does.  No hub is reachable, so edgellm trains its own on
text every machine with Python has: the standard library's source (``edgellm.textdata``: the
held-out files are never trained on).  Three:

- ``small``: ~3 M parameters, a few minutes on a 2-core CPU; the demo model and the tests' model.
- ``bench``: ~24 M parameters (hidden 512, every matrix row a multiple of 256, so K-quants apply
  everywhere, as on real models), trained on a GPU for the quality benchmarks
  (``benchmarks/reference_gpu.py`` runs this module's loop there).
- ``docs``: another shape (hidden 384, 6 layers, 3 query heads per KV head, an untied head) on
  another text, the Python documentation's prose (``textdata.docs_split``), with its own
  tokenizer and held-out text: a check that what was tuned on the other two carries over.
  11 M parameters, trained on a 2-core CPU in under 15 minutes.

Deterministic from the seed on a CPU (CUDA kernels may differ in the last bits).  Weights are cached
outside the repository (``cache_root()/reference/NAME-vN``); the code that makes them is here.
``train_loop`` imports nothing of edgellm, so the GPU script can load this file on its own.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass(frozen=True)
class RefSpec:
    name: str
    vocab: int
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    seq: int                 # training sequence length (and the context quality is measured at)
    batch: int
    steps: int
    lr: float
    version: int = 1         # bump when the recipe changes: the cache follows it
    seed: int = 0
    corpus: str = "source"   # textdata.corpus_text: "source" (the standard library) or "docs"
    tied: bool = True        # the head shares the embedding table

    @property
    def cache_name(self) -> str:
        return f"{self.name}-v{self.version}"


SPECS = {
    "small": RefSpec("small", vocab=1024, hidden=256, layers=4, heads=4, kv_heads=2, intermediate=768,
                     seq=256, batch=8, steps=240, lr=3e-3),
    "bench": RefSpec("bench", vocab=4096, hidden=512, layers=8, heads=8, kv_heads=4, intermediate=1280,
                     seq=512, batch=32, steps=2400, lr=1.5e-3),
    "docs": RefSpec("docs", vocab=2048, hidden=384, layers=6, heads=6, kv_heads=2, intermediate=1024,
                    seq=256, batch=8, steps=400, lr=2e-3, corpus="docs", tied=False),
}


def cache_root() -> Path:
    """$EDGELLM_CACHE, else $XDG_CACHE_HOME/edgellm, else ~/.cache/edgellm."""
    if os.environ.get("EDGELLM_CACHE"):
        return Path(os.environ["EDGELLM_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "edgellm"


def train_loop(model, ids, spec: RefSpec, device: str = "cpu", progress=lambda step, loss: None):
    """Next-token training of ``model`` on the token array ``ids``: AdamW, one-cycle schedule,
    random windows of ``spec.seq`` drawn from a seeded generator; bfloat16 autocast on CUDA."""
    import torch

    model.to(device).train()
    data = torch.as_tensor(ids.astype("int64") if hasattr(ids, "astype") else ids)
    opt = torch.optim.AdamW(model.parameters(), lr=spec.lr, weight_decay=0.01, betas=(0.9, 0.95))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=spec.lr, total_steps=spec.steps, pct_start=0.1)
    gen = torch.Generator().manual_seed(spec.seed)
    for step in range(spec.steps):
        starts = torch.randint(0, len(data) - spec.seq - 1, (spec.batch,), generator=gen)
        x = torch.stack([data[s:s + spec.seq] for s in starts]).to(device)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.startswith("cuda")):
            loss = model(input_ids=x, labels=x).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        progress(step + 1, loss.item())
    model.eval()
    return model


def tokenizer_for(spec: RefSpec):
    from edgellm.exporters.demo_models import train_tokenizer
    from edgellm.textdata import corpus_text

    return train_tokenizer(vocab_size=spec.vocab, limit_bytes=2 << 20,
                           text=None if spec.corpus == "source" else corpus_text(spec.corpus, "training"))


def corpus_ids(tok, spec: RefSpec):
    """The training text as token ids (uint16): the small model reads the first 2 MB of the
    standard library, the bench model all of it, the docs model its whole training split."""
    import numpy as np

    from edgellm.textdata import corpus_text, text_ids

    text = corpus_text(spec.corpus, "training", 2 << 20 if spec.name == "small" else None)
    return np.asarray(text_ids(tok, text), dtype=np.uint16)


def corpus_of(model_dir: Path) -> str:
    """The corpus a reference model was trained on ("source" for any other model folder); read
    guarded (a FIFO or a link out of the folder there is refused, not waited on)."""
    from edgellm.errors import EdgeLLMError
    from edgellm.core.model_files import member
    from edgellm.core.files import read_json_object

    try:
        corpus = read_json_object(member(model_dir, "edgellm-reference.json"), 1 << 20).get("corpus", "source")
    except EdgeLLMError:
        return "source"
    return corpus if corpus in ("source", "docs") else "source"


def untrained(spec: RefSpec, folder: Path, tok=None) -> Path:
    """The Hugging Face folder (config, tokenizer, weights at the standard init) to train."""
    import torch
    from transformers import AutoModelForCausalLM

    from edgellm.exporters.demo_models import build_model

    tok = tok or tokenizer_for(spec)
    build_model("llama", folder, tok, seed=spec.seed, hidden_size=spec.hidden, num_hidden_layers=spec.layers,
                num_attention_heads=spec.heads, num_key_value_heads=spec.kv_heads,
                intermediate_size=spec.intermediate, max_position_embeddings=max(1024, spec.seq), tied=spec.tied)
    torch.manual_seed(spec.seed)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    for p in model.parameters():
        if p.dim() == 2:
            torch.nn.init.normal_(p, 0.0, 0.02)
    model.save_pretrained(folder, safe_serialization=True)
    return folder


def train(spec: RefSpec, folder: Path, device: str = "cpu", progress=lambda step, loss: None) -> Path:
    """Tokenizer, model and training, all here; writes the trained Hugging Face folder."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(spec.seed)
    tok = tokenizer_for(spec)
    untrained(spec, folder, tok)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    train_loop(model, corpus_ids(tok, spec), spec, device, progress)
    model.to("cpu").save_pretrained(folder, safe_serialization=True)
    (folder / "edgellm-reference.json").write_text(__import__("json").dumps(asdict(spec), indent=1))
    return folder


def reference_model(name: str = "small", rebuild: bool = False, device: str = "cpu",
                    progress=lambda step, loss: None) -> Path:
    """The cached reference model's folder, trained first if it is not there (atomically: a
    half-trained folder never looks finished)."""
    spec = SPECS[name]
    folder = cache_root() / "reference" / spec.cache_name
    if not rebuild and (folder / "edgellm-reference.json").is_file():
        return folder
    tmp = folder.with_name(folder.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    train(spec, tmp, device, progress)
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    return folder
