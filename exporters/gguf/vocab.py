"""The tokenizer, as GGUF metadata that llama.cpp reads.

Byte-level BPE tokenizers (GPT-2, Llama 3, Qwen, SmolLM, and any trained locally with the same
pre-tokenizer) are read straight from ``tokenizer.json``.  llama.cpp needs to know which
pre-tokenizer splits text before BPE (``tokenizer.ggml.pre``); its own converter guesses that
from a hash of a test encoding and refuses any tokenizer it has not seen.  Here it is identified
from the definition in tokenizer.json itself, compared with the split rules llama.cpp implements
for each name (src/llama-vocab.cpp), so a retrained or fine-tuned tokenizer converts.  A definition
that matches none is an error that says so, never a silent fallback to GPT-2's rules.

SentencePiece tokenizers (``tokenizer.model``: Llama 2, Gemma, Phi-3) are read with the ``gguf``
package's SentencePieceVocab: pieces, scores and types, as llama.cpp's "llama" tokenizer takes them.
Folders saved by transformers 5 hold only tokenizer.json; its SentencePiece BPE (byte fallback) is
read from there (``read_spm_bpe_json``).
Merges, special token ids, add-bos/eos flags and the chat template come from the ``gguf``
package's SpecialVocab.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from edgellm.errors import BadInput
from edgellm.core.model_files import member

# tokenizer.json split regexes -> llama.cpp pre-tokenizer names
LLAMA3_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
               r"|\s*[\r\n]+|\s+(?!\S)|\s+")
# o200k's split (GPT-4o; Phi-4-mini's tokenizer.json), llama.cpp's LLAMA_VOCAB_PRE_TYPE_GPT4O
GPT4O_REGEX = (r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"
               r"(?i:'s|'t|'re|'ve|'m|'ll|'d)?|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+"
               r"[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*"
               r"|\s*[\r\n]+|\s+(?!\S)|\s+")
SPLIT_REGEXES = {LLAMA3_REGEX: "llama-bpe", QWEN2_REGEX: "qwen2", GPT4O_REGEX: "gpt-4o"}
SUPPORTED_PRE = ("gpt-2 (ByteLevel with its own regex)", "smollm (Digits + ByteLevel)",
                 "llama-bpe (Llama 3 split regex)", "qwen2 (Qwen2 split regex)",
                 "gpt-4o (o200k split regex: Phi-4-mini)")

MAX_TOKENIZER_JSON = 256 << 20     # Gemma 3's 262k-token tokenizer.json is 33 MB

# GGUF token types (gguf.TokenType)
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6


@dataclass
class Vocab:
    model: str                  # tokenizer.ggml.model
    pre: str                    # tokenizer.ggml.pre
    tokens: list[str]
    types: list[int]
    n_real: int                 # tokens the tokenizer defines; the rest pad the embedding
    scores: list[float] | None = None       # SentencePiece merge priorities
    add_space_prefix: bool | None = None    # SentencePiece: prepend a space to the text


def _spm_space_prefix(tj: dict) -> bool:
    """Whether the Hugging Face tokenizer prepends '▁' (legacy Llama normalizer, or a Metaspace
    pre-tokenizer that prepends); llama.cpp's add_space_prefix does the same."""
    norm = tj.get("normalizer") or {}
    parts = norm.get("normalizers", [norm]) if norm else []
    if any(p.get("type") == "Prepend" for p in parts):
        return True
    pre = tj.get("pre_tokenizer") or {}
    pres = pre.get("pretokenizers", [pre]) if pre else []
    return any(p.get("type") == "Metaspace" and p.get("prepend_scheme", "always") in ("always", "first")
               for p in pres)


MAX_SPM_BYTES = 64 << 20            # real tokenizer.model files are 0.5-5 MB


def read_spm_vocab(folder: Path, n_vocab: int) -> Vocab:
    """A SentencePiece tokenizer (tokenizer.model) through the gguf package's reader.  That reader
    opens tokenizer.model and added_tokens.json itself, unguarded (a FIFO there would hang it, a
    link would be followed out of the folder), so it is handed private copies of the two, read
    through the guarded reader: inside the folder, regular files, bounded."""
    import tempfile

    import gguf

    from edgellm.core.files import read_small_bytes

    with tempfile.TemporaryDirectory(prefix="edgellm-spm-") as tmp:
        for name, limit in (("tokenizer.model", MAX_SPM_BYTES), ("added_tokens.json", 1 << 20)):
            src = member(folder, name, "tokenizer file")
            if name == "tokenizer.model" or src.exists() or src.is_symlink():
                (Path(tmp) / name).write_bytes(read_small_bytes(src, limit))
        try:
            spm = gguf.vocab.SentencePieceVocab(Path(tmp))
        except Exception as e:  # noqa: BLE001 - protobuf or sentencepiece errors: one line
            raise BadInput(f"{folder / 'tokenizer.model'}: cannot read it as a SentencePiece model "
                           f"({str(e).replace(tmp, str(folder))[:200]})") from None
    tokens, scores, types = [], [], []
    for text, score, kind in spm.all_tokens():
        tokens.append(text.decode("utf-8"))
        scores.append(float(score))
        types.append(int(kind))
    n_real = len(tokens)
    if n_real > n_vocab:
        raise BadInput(f"{folder}: the tokenizer has {n_real} tokens but the model's embedding only {n_vocab} rows")
    for i in range(n_real, n_vocab):
        tokens.append(f"[PAD{i}]")
        scores.append(-1000.0)
        types.append(UNUSED)
    tj = _tokenizer_json(folder) if (folder / "tokenizer.json").exists() else {}
    return Vocab(model="llama", pre="default", tokens=tokens, types=types, n_real=n_real, scores=scores,
                 add_space_prefix=_spm_space_prefix(tj) if tj else True)


def read_spm_bpe_json(tj: dict, path: Path, n_vocab: int) -> Vocab:
    """A SentencePiece BPE vocabulary with byte fallback (Llama 2, Mistral) from tokenizer.json
    alone, as transformers 5 saves it (no tokenizer.model).  llama.cpp's "llama" tokenizer merges
    by piece score; SentencePiece numbers pieces by falling score and transformers' converter keeps
    those ids, so -id is each piece's merge priority.  Verification checks the ids are identical."""
    import re

    by_id: dict[int, tuple[str, int, float]] = {}
    for text, i in tj["model"]["vocab"].items():
        kind = BYTE if re.fullmatch(r"<0x[0-9A-Fa-f]{2}>", text) else NORMAL
        by_id[i] = (text, kind, 0.0 if kind == BYTE else -float(i))
    unk = tj["model"].get("unk_token")
    for added in tj.get("added_tokens", []):
        kind = CONTROL if added.get("special") else USER_DEFINED
        if added["content"] == unk:
            kind = UNKNOWN
        by_id[added["id"]] = (added["content"], kind, 0.0)
    n_real = max(by_id) + 1
    if n_real > n_vocab:
        raise BadInput(f"{path}: the tokenizer has {n_real} tokens but the model's embedding only "
                       f"{n_vocab} rows; tokenizer and model do not belong together")
    tokens, types, scores = [], [], []
    for i in range(n_vocab):
        text, kind, score = by_id.get(i, (f"[PAD{i}]", UNUSED, -1000.0))
        tokens.append(text)
        types.append(kind)
        scores.append(score)
    return Vocab(model="llama", pre="default", tokens=tokens, types=types, n_real=n_real, scores=scores,
                 add_space_prefix=_spm_space_prefix(tj))


def _byte_level(p: dict, use_regex: bool) -> bool:
    return (p.get("type") == "ByteLevel" and not p.get("add_prefix_space", False)
            and p.get("use_regex", True) == use_regex)


def identify_pre_tokenizer(tj: dict, where: str) -> str:
    pre = tj.get("pre_tokenizer") or {}
    if _byte_level(pre, use_regex=True):
        return "gpt-2"
    parts = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else []
    if len(parts) == 2 and parts[0].get("type") == "Digits" and parts[0].get("individual_digits") \
            and _byte_level(parts[1], use_regex=True):
        return "smollm"
    if len(parts) == 2 and parts[0].get("type") == "Split" and _byte_level(parts[1], use_regex=False) \
            and parts[0].get("behavior") == "Isolated" and not parts[0].get("invert"):
        name = SPLIT_REGEXES.get((parts[0].get("pattern") or {}).get("Regex", ""))
        if name:
            return name
    summary = json.dumps(pre)[:160]
    raise BadInput(f"{where}: this BPE pre-tokenizer is not one llama.cpp implements, so the GGUF "
                   f"would tokenize differently ({summary}); recognised: {'; '.join(SUPPORTED_PRE)}")


def _tokenizer_json(folder: Path) -> dict:
    from edgellm.core.files import read_json_object

    return read_json_object(member(folder, "tokenizer.json", "tokenizer file"), MAX_TOKENIZER_JSON)


def read_vocab(folder: Path, n_vocab: int, pipeline: dict | None = None) -> Vocab:
    """Tokens and their types from tokenizer.json, padded to the model's embedding rows.
    ``pipeline``: the normalizer, pre-tokenizer and decoder transformers actually runs, where they
    differ from the file's (exporters/io/tokenizer_source.py): the pre-tokenizer is named from them."""
    path = member(folder, "tokenizer.json", "tokenizer file")
    if member(folder, "tokenizer.model", "tokenizer file").is_file():
        return read_spm_vocab(folder, n_vocab)
    if not path.exists():
        raise BadInput(f"{folder}: no tokenizer.json; the bundle needs the tokenizer (a fast "
                       "tokenizer saved by transformers)")
    tj = _tokenizer_json(folder)
    if pipeline:
        tj = {**tj, **pipeline}
    model = tj.get("model")
    if not isinstance(model, dict) or not isinstance(model.get("vocab"), dict):
        raise BadInput(f"{path}: not a valid tokenizer.json (no model vocabulary)")
    if model.get("type") == "BPE" and model.get("byte_fallback"):
        return read_spm_bpe_json(tj, path, n_vocab)
    if model.get("type") != "BPE" or (tj.get("decoder") or {}).get("type") != "ByteLevel":
        raise BadInput(f"{path}: a {model.get('type')} tokenizer"
                       f"{' with byte fallback' if model.get('byte_fallback') else ''} without its tokenizer.model; "
                       "GGUF export converts byte-level BPE (tokenizer.json) and SentencePiece (tokenizer.model)")
    pre = identify_pre_tokenizer(tj, str(path))
    by_id: dict[int, tuple[str, int]] = {i: (t, NORMAL) for t, i in model["vocab"].items()}
    for added in tj.get("added_tokens", []):
        by_id[added["id"]] = (added["content"], CONTROL if added.get("special") else USER_DEFINED)
    n_real = max(by_id) + 1
    if n_real > n_vocab:
        raise BadInput(f"{path}: the tokenizer has {n_real} tokens but the model's embedding only "
                       f"{n_vocab} rows; tokenizer and model do not belong together")
    tokens, types = [], []
    for i in range(n_vocab):
        text, kind = by_id.get(i, (f"[PAD{i}]", UNUSED))
        tokens.append(text)
        types.append(kind)
    return Vocab(model="gpt2", pre=pre, tokens=tokens, types=types, n_real=n_real)


def add_to_writer(writer, folder: Path, vocab: Vocab) -> None:
    """Write the tokenizer keys: model, pre-tokenizer, tokens, types, merges, specials, template."""
    import gguf

    writer.add_tokenizer_model(vocab.model)
    writer.add_tokenizer_pre(vocab.pre)
    writer.add_token_list(vocab.tokens)
    writer.add_token_types(vocab.types)
    if vocab.scores is not None:
        writer.add_token_scores(vocab.scores)
    if vocab.add_space_prefix is not None:
        writer.add_add_space_prefix(vocab.add_space_prefix)
    bpe = vocab.model == "gpt2"
    special = gguf.SpecialVocab(folder, load_merges=bpe, n_vocab=len(vocab.tokens))
    if bpe and not special.merges:
        raise BadInput(f"{folder}: tokenizer.json has no BPE merges")
    special.add_to_gguf(writer, quiet=True)
