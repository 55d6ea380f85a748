"""Where export finds a model's weights: a local folder, or a hub id fetched (or found in the cache)
by huggingface_hub.  Only weights, configs and tokenizer files are fetched; never code."""

from __future__ import annotations

from pathlib import Path

from edgellm.errors import BadInput, Unreachable
from edgellm.models.source import HUB_ID

ALLOW = ["*.safetensors", "*.safetensors.index.json", "config.json", "generation_config.json",
         "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja"]


def weights_folder(model: str) -> Path:
    path = Path(model).expanduser()
    if path.exists():
        if not path.is_dir():
            raise BadInput(f"{model}: export needs the model folder, not a file")
        return path
    if not HUB_ID.match(model):
        raise BadInput(f"{model}: no such folder (and not a hub id of the form org/name)")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        return Path(snapshot_download(model, allow_patterns=ALLOW))
    except LocalEntryNotFoundError:
        raise Unreachable(f"{model}: not in the local Hugging Face cache and the hub cannot be reached; "
                          "pass a local model folder") from None
    except HfHubHTTPError as e:
        raise Unreachable(f"{model}: the hub refused the download ({e.response.status_code if e.response is not None else e})") from None
