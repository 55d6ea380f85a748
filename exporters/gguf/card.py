"""``general.*`` metadata for a GGUF: name, basename, size label, license, base model, tags,
languages, quantized-by, as llama.cpp apps list and show them.

Taken from the model card's YAML front matter (``README.md``) where it has them, with the gguf
package's own heuristics (``gguf.Metadata``, as llama.cpp's converter fills these keys).  The card
comes from a stranger: it is read bounded (a regular file inside the folder, at most 1 MiB),
parsed with YAML's safe loader, and ignored (with a note) when it is not a mapping.
"""

from __future__ import annotations

from pathlib import Path

from edgellm import __version__
from edgellm.exporters.io.model_files import member

MAX_CARD = 1 << 20


def read_card(folder: Path) -> dict:
    """The model card's front matter as a dict ({} when there is none, or it is not valid)."""
    from edgellm.errors import BadInput
    from edgellm.runtime.tokenizer import read_small_text

    path = member(folder, "README.md", "model card")
    if not path.exists():
        return {}
    try:
        text = read_small_text(path, MAX_CARD)
    except BadInput:
        return {}
    lines = text.splitlines()
    if not lines or lines[0].strip() != "---":
        return {}
    try:
        end = next(i for i, ln in enumerate(lines[1:], 1) if ln.strip() == "---")
    except StopIteration:
        return {}
    import yaml

    try:
        data = yaml.safe_load("\n".join(lines[1:end]))
    except yaml.YAMLError:
        return {}
    return data if isinstance(data, dict) else {}


def general_metadata(folder: Path, name: str | None, n_params: int):
    """A ``gguf.Metadata`` for the file (``name``: None leaves general.name out)."""
    import gguf

    card = {k: v for k, v in read_card(folder).items() if isinstance(k, str)}
    public = Path(name or folder.name)
    try:
        md = gguf.Metadata.apply_metadata_heuristic(gguf.Metadata(), card, {}, public, n_params)
    except Exception:  # noqa: BLE001 - the heuristics choke on odd card values: keep what is sure
        md = gguf.Metadata()
    md.name = name
    md.size_label = md.size_label or gguf.size_label(n_params, 0, 0, 0)
    md.quantized_by = f"edgellm {__version__}"
    for key in ("license", "license_name", "license_link"):
        value = getattr(md, key)
        if value is not None and not isinstance(value, str):
            setattr(md, key, ", ".join(map(str, value)) if isinstance(value, list) else str(value))
    for key in ("tags", "languages"):
        value = getattr(md, key)
        if value is not None:
            setattr(md, key, [str(v) for v in (value if isinstance(value, list) else [value])][:64])
    return md
