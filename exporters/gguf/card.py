"""``general.*`` metadata for a GGUF: name, basename, size label, license, base model, tags,
languages, quantized-by, as llama.cpp apps list and show them.

Taken from the model card's YAML front matter (``README.md``) where it has them, with the gguf
package's own heuristics (``gguf.Metadata``, as llama.cpp's converter fills these keys).  The card
comes from a stranger and is only decoration, so it is data parsed within budgets: read bounded (a
regular file inside the folder, at most 1 MiB; front matter at most 64 KiB), composed with YAML's
safe loader under limits on nesting, on the size of the tree its aliases expand to (a "billion
laughs" card is a few lines that expand to 10^9 nodes) and on each value's length, then built.
Any problem (a link out of the folder, a FIFO, bad UTF-8, bad YAML, a budget passed, not a
mapping): the card is ignored with one warning line, and the export goes on without it.
"""

from __future__ import annotations

import warnings
from pathlib import Path

from edgellm import __version__
from edgellm.errors import EdgeLLMWarning
from edgellm.core.model_files import member

MAX_CARD = 1 << 20
MAX_FRONT_MATTER = 64 << 10
MAX_DEPTH = 16
MAX_NODES = 4096             # values in the tree once every alias is expanded
MAX_SCALAR = 4096            # characters in one value
_warned: set[str] = set()


class CardRefused(ValueError):
    pass


def _loader():
    import yaml

    class Loader(yaml.SafeLoader):
        """SafeLoader that stops composing past ``MAX_DEPTH`` (the composer recurses)."""
        depth = 0

        def compose_node(self, parent, index):
            self.depth += 1
            try:
                if self.depth > MAX_DEPTH:
                    raise CardRefused(f"nested deeper than {MAX_DEPTH}")
                return super().compose_node(parent, index)
            finally:
                self.depth -= 1
    return Loader


def _expanded(node, sizes: dict) -> tuple[int, int]:
    """(nodes, characters) of ``node``'s tree with every alias expanded, each distinct node
    visited once (a bomb costs its few lines to check, not its expansion); CardRefused past the
    budgets, or for an alias inside itself."""
    import yaml

    if id(node) in sizes:
        if sizes[id(node)] is None:
            raise CardRefused("an alias refers to itself")
        return sizes[id(node)]
    sizes[id(node)] = None
    if isinstance(node, yaml.ScalarNode):
        if len(node.value) > MAX_SCALAR:
            raise CardRefused(f"a value longer than {MAX_SCALAR:,} characters")
        n, chars = 1, len(node.value)
    else:
        kids = [_expanded(c, sizes) for c in (node.value if isinstance(node, yaml.SequenceNode)
                                              else [x for pair in node.value for x in pair])]
        n, chars = 1 + sum(k[0] for k in kids), sum(k[1] for k in kids)
    if n > MAX_NODES or chars > MAX_FRONT_MATTER:
        raise CardRefused(f"expands (through aliases) past {MAX_NODES:,} values or {MAX_FRONT_MATTER:,} characters")
    sizes[id(node)] = (n, chars)
    return n, chars


def parse_front_matter(text: str):
    """The YAML between a card's leading ``---`` lines, parsed within the budgets: a dict, or
    CardRefused saying why not (None when there is no front matter)."""
    lines = text.splitlines()
    if not lines or lines[0].strip() != "---":
        return None
    end = next((i for i, ln in enumerate(lines[1:], 1) if ln.strip() == "---"), None)
    if end is None:
        return None
    body = "\n".join(lines[1:end])
    if len(body) > MAX_FRONT_MATTER:
        raise CardRefused(f"front matter longer than {MAX_FRONT_MATTER:,} characters")
    loader = None
    try:
        loader = _loader()(body)                  # its reader already refuses control characters
        node = loader.get_single_node()
        if node is None:
            return None
        _expanded(node, {})
        data = loader.construct_document(node)
    except CardRefused:
        raise
    except Exception as e:  # noqa: BLE001 - YAMLError, and what constructors raise (int('9'*5000))
        raise CardRefused(f"not valid YAML ({type(e).__name__})") from None
    finally:
        if loader is not None:
            loader.dispose()
    if not isinstance(data, dict):
        raise CardRefused("front matter is not a mapping")
    _check_values(data)
    return data


def _check_values(value) -> None:
    """Only plain values (a 2,000-digit hex number would fail str() later; bytes, sets ... mean
    nothing in a card).  The tree is small by now: ``_expanded`` bounded it."""
    import datetime

    if isinstance(value, dict):
        for k, v in value.items():
            _check_values(k)
            _check_values(v)
    elif isinstance(value, list):
        for v in value:
            _check_values(v)
    elif isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 64:
        raise CardRefused("a number of more than 64 bits")
    elif not isinstance(value, (str, int, float, bool, datetime.date, type(None))):
        raise CardRefused(f"a value of type {type(value).__name__}")


def read_card(folder: Path) -> dict:
    """The model card's front matter as a dict: {} when there is none, or (with one warning on
    stderr) when it is refused."""
    from edgellm.errors import BadInput
    from edgellm.core.files import read_small_text

    path = Path(folder) / "README.md"
    if not path.exists() and not path.is_symlink():
        return {}
    try:
        data = parse_front_matter(read_small_text(member(folder, "README.md", "model card"), MAX_CARD))
    except (BadInput, CardRefused) as e:
        why = e.message if isinstance(e, BadInput) else f"{path}: {e}"
        if str(path) not in _warned:
            _warned.add(str(path))
            warnings.warn(f"model card ignored: {why}", EdgeLLMWarning, stacklevel=2)
        return {}
    return data or {}


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
            setattr(md, key, [str(v)[:MAX_SCALAR] for v in (value if isinstance(value, list) else [value])[:64]])
    return md
