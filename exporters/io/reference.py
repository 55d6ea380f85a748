"""The original model as transformers runs it: the reference that verification, evaluation,
calibration and distillation measure against.

Security boundary: the weights transformers reads are the ones edgellm's checks allowed
(safetensors where the folder has them; a pickle-only folder only after ``--allow-pickle``), and
with ``config`` (the ``ModelConfig`` edgellm already read through its bounded reader) transformers
builds the model from that instead of reading ``config.json`` a second time.  Code from the folder
runs only with ``trust_remote_code``.
"""

from __future__ import annotations

from pathlib import Path

from edgellm.errors import EdgeLLMError


VERIFY = "the original model to verify against", "; --no-verify skips verification"


def load_reference(model_dir: Path, trust_remote_code: bool = False, config=None, role: tuple[str, str] = VERIFY):
    """(tokenizer, float32 model in eval mode) of ``model_dir``; one line when transformers fails,
    naming what the model was loaded as (``role``: what it is, and a way round, if any)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from edgellm.exporters.io.checkpoint import transformers_weights

    kw = transformers_weights(Path(model_dir))
    if config is not None and getattr(config, "raw", None) and not trust_remote_code:
        try:
            kw["config"] = AutoConfig.for_model(**dict(config.raw))
        except (ValueError, KeyError, TypeError):
            pass                                    # transformers reads it itself, as it would anyway
    try:
        tok = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32,
                                                     trust_remote_code=trust_remote_code, **kw)
    except Exception as e:  # noqa: BLE001 - whatever transformers raises, the user needs one line
        raise EdgeLLMError(f"{model_dir}: transformers cannot load {role[0]} ({type(e).__name__}: {e}){role[1]}") \
            from None
    model.eval()
    return tok, model
