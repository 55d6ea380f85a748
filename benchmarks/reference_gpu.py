"""Train the ``bench`` reference model (~24 M parameters) on a GPU machine.

The GPU machine has PyTorch and transformers but not edgellm, and files travel in and out in
pieces of at most ~16 MB, so the work is split in three:

  python benchmarks/reference_gpu.py prepare            # here: tokenizer, config and token ids -> .refwork/
  python3 benchmarks/reference_gpu.py train .refwork OUT   # there: edgellm's own training loop, bf16 shards -> OUT
  python benchmarks/reference_gpu.py finish OUT          # here: the Hugging Face folder, into edgellm's cache

``train`` loads ``exporters/reference_model.py`` by path (its loop imports nothing of edgellm).
Without a GPU machine, ``python benchmarks/reference_gpu.py local`` runs all three here (hours on a
2-core CPU).
"""

from __future__ import annotations

import importlib.util
import json
import sys
import time
from pathlib import Path

SHARD_BYTES = 14 << 20
HERE = Path(__file__).resolve().parent


def _module():
    spec = importlib.util.spec_from_file_location("reference_model", HERE.parent / "exporters" / "reference_model.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["reference_model"] = mod
    spec.loader.exec_module(mod)
    return mod


def prepare(work: Path) -> None:
    import numpy as np

    from edgellm.exporters import reference_model as rm

    spec = rm.SPECS["bench"]
    tok = rm.tokenizer_for(spec)
    folder = work / "model"
    folder.mkdir(parents=True, exist_ok=True)
    tok.save_pretrained(folder)
    rm.untrained(spec, folder, tok)
    (folder / "model.safetensors").unlink()           # the GPU initialises its own (same scheme)
    ids = rm.corpus_ids(tok, spec)
    np.save(work / "ids.npy", ids)
    print(f"prepared {work}: {len(ids):,} training tokens, vocab {len(tok)}")


def train(work: Path, out: Path) -> None:
    import numpy as np
    import torch
    from safetensors.torch import save_file
    from transformers import AutoConfig, AutoModelForCausalLM

    rm = _module()
    spec = rm.SPECS["bench"]
    torch.manual_seed(spec.seed)
    cfg = AutoConfig.from_pretrained(work / "model")
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    for p in model.parameters():
        if p.dim() == 2:
            torch.nn.init.normal_(p, 0.0, 0.02)
    ids = np.load(work / "ids.npy")
    t0 = time.time()
    log = lambda s, loss: print(f"step {s}/{spec.steps} loss {loss:.3f} {time.time() - t0:.0f}s", flush=True) \
        if s % 100 == 0 or s == spec.steps else None
    rm.train_loop(model, ids, spec, "cuda", log)
    state = {k: v.detach().to("cpu", torch.bfloat16).contiguous() for k, v in model.state_dict().items()
             if not (cfg.tie_word_embeddings and k == "lm_head.weight")}
    shard, size, n = {}, 0, 0
    for k, v in state.items():
        if shard and size + v.numel() * 2 > SHARD_BYTES:
            save_file(shard, str(out / f"shard-{n}.safetensors"))
            shard, size, n = {}, 0, n + 1
        shard[k], size = v, size + v.numel() * 2
    save_file(shard, str(out / f"shard-{n}.safetensors"))
    (out / "train.json").write_text(json.dumps({"spec": spec.__dict__, "seconds": time.time() - t0,
                                                "tokens": spec.steps * spec.batch * spec.seq}))


def finish(shards: Path, work: Path = Path(".refwork")) -> Path:
    import shutil

    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoConfig

    from edgellm.exporters import reference_model as rm

    spec = rm.SPECS["bench"]
    state = {}
    for f in sorted(shards.glob("shard-*.safetensors")):
        state.update(load_file(str(f)))
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(work / "model"), dtype=torch.float32)
    missing, unexpected = model.load_state_dict({k: v.float() for k, v in state.items()}, strict=False)
    if unexpected or [m for m in missing if m != "lm_head.weight"]:
        raise SystemExit(f"shards do not match the model: missing {missing}, unexpected {unexpected}")
    model.tie_weights()
    folder = rm.cache_root() / "reference" / spec.cache_name
    tmp = folder.with_name(folder.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(work / "model", tmp)
    model.save_pretrained(tmp, safe_serialization=True)
    record = json.loads((shards / "train.json").read_text()) if (shards / "train.json").is_file() else {}
    (tmp / "edgellm-reference.json").write_text(json.dumps({**spec.__dict__, "trained": record}, indent=1))
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    print(f"reference model: {folder}")
    return folder


if __name__ == "__main__":
    cmd = sys.argv[1] if len(sys.argv) > 1 else ""
    if cmd == "prepare":
        prepare(Path(sys.argv[2]) if len(sys.argv) > 2 else Path(".refwork"))
    elif cmd == "train":
        train(Path(sys.argv[2]), Path(sys.argv[3]))
    elif cmd == "finish":
        finish(Path(sys.argv[2]))
    elif cmd == "local":
        from edgellm.exporters import reference_model as rm
        import torch
        print(rm.reference_model("bench", device="cuda" if torch.cuda.is_available() else "cpu"))
    else:
        raise SystemExit(__doc__)
