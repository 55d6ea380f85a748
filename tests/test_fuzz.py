"""Property-based fuzzing (Hypothesis) of every reader of untrusted bytes: the GGUF checker, the
safetensors reader and index, the manifest and bundle opener, config parsing, device profiles,
model cards' front matter, data files.

Properties: no exception but edgellm's own error; bounded time; nothing read outside the folder.
The suite runs a small fixed-seed budget; ``benchmarks/fuzz.py`` runs the same properties with a
nightly-size one (EDGELLM_FUZZ_EXAMPLES).
"""

import hashlib
import json
import math
import os
import struct
import tempfile
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import CORPUS
from edgellm.errors import EdgeLLMError

EXAMPLES = int(os.environ.get("EDGELLM_FUZZ_EXAMPLES", "120"))
FUZZ = settings(max_examples=EXAMPLES, derandomize="EDGELLM_FUZZ_EXAMPLES" not in os.environ,
                deadline=None, suppress_health_check=list(HealthCheck), database=None)
SECONDS = 10.0                  # the bound on any one input
VALID_GGUF = (CORPUS / "valid.gguf").read_bytes()


def bounded(fn, *args):
    """Run a reader: it returns, or raises an EdgeLLMError; it never takes long."""
    t0 = time.monotonic()
    try:
        return fn(*args)
    except EdgeLLMError as e:
        assert "\n" not in e.message
        return None
    finally:
        assert time.monotonic() - t0 < SECONDS


def scratch() -> Path:
    return Path(tempfile.mkdtemp(prefix="edgellm-fuzz-"))


# -- GGUF checker ------------------------------------------------------------------------------
def mutated(base: bytes):
    """A real file with bytes flipped, spliced in, or cut off: the header is where the meaning is."""
    head = min(len(base), 4096)
    flip = st.tuples(st.integers(0, head - 1), st.integers(0, 255))
    return st.tuples(st.lists(flip, max_size=8), st.integers(8, len(base)),
                     st.binary(max_size=64), st.integers(0, head)).map(
        lambda t: _apply(base, *t))


def _apply(base: bytes, flips, cut, insert, at) -> bytes:
    b = bytearray(base)
    for i, v in flips:
        b[i] = v
    b = b[:at] + insert + b[at:]
    return bytes(b[:cut + len(insert)])


@FUZZ
@given(blob=mutated(VALID_GGUF))
def test_gguf_checker_never_fails_but_cleanly(blob):
    from edgellm.runtime.gguf_check import read_header

    p = scratch() / "x.gguf"
    p.write_bytes(blob)
    bounded(read_header, p)


def _kv(key: str, vtype: int, payload: bytes) -> bytes:
    k = key.encode()
    return struct.pack("<Q", len(k)) + k + struct.pack("<I", vtype) + payload


scalar = st.one_of(
    st.integers(0, 2 ** 32 - 1).map(lambda v: (4, struct.pack("<I", v))),
    st.floats(allow_nan=True, allow_infinity=True, width=32).map(lambda v: (6, struct.pack("<f", v))),
    st.text(max_size=20).map(lambda v: (8, struct.pack("<Q", len(v.encode())) + v.encode())),
    st.integers(0, 2 ** 32 - 1).map(lambda v: (9, struct.pack("<IQ", 4, 1) + struct.pack("<I", v))),
)
KEYS = ["llama.block_count", "llama.expert_count", "llama.expert_used_count", "llama.attention.head_count",
        "llama.attention.head_count_kv", "llama.attention.layer_norm_rms_epsilon", "llama.rope.dimension_count",
        "llama.embedding_length", "llama.rope.scaling.type", "tokenizer.ggml.model", "tokenizer.ggml.bos_token_id",
        "tokenizer.ggml.add_bos_token", "general.alignment", "llama.attention.key_length",
        "llama.nextn_predict_layers", "llama.expert_group_count"]


@FUZZ
@given(extra=st.dictionaries(st.sampled_from(KEYS), scalar, max_size=4))
def test_gguf_metadata_values_never_fail_but_cleanly(extra):
    """Metadata of the valid file replaced key by key with values of any type."""
    from edgellm.runtime.gguf_check import read_header

    blob = _with_metadata(VALID_GGUF, extra)
    p = scratch() / "x.gguf"
    p.write_bytes(blob)
    bounded(read_header, p)


def _with_metadata(base: bytes, extra: dict) -> bytes:
    """``base`` with ``extra`` (key -> (type, payload)) appended to its key/value section, its
    count raised to match, and the tensor data re-aligned; existing keys of the same name stay,
    so some inputs are duplicate keys (refused as such)."""
    n_t, n_kv = struct.unpack_from("<QQ", base, 8)
    kv_end, infos_end = _section_ends(base, n_t, n_kv)
    data_start = -(-infos_end // 32) * 32
    added = b"".join(_kv(k, t, payload) for k, (t, payload) in extra.items())
    head = base[:8] + struct.pack("<QQ", n_t, n_kv + len(extra)) + base[24:kv_end] + added + base[kv_end:infos_end]
    pad = (-len(head)) % 32
    return head + b"\0" * pad + base[data_start:]


def _section_ends(base: bytes, n_t: int, n_kv: int) -> tuple[int, int]:
    """Offsets just past the key/value section and the tensor infos (walked as the checker does)."""
    import io

    from edgellm.runtime.gguf_check import _Cursor

    f = io.BytesIO(base)
    f.seek(24)
    c = _Cursor(f, len(base), lambda m: AssertionError(m))
    for _ in range(n_kv):
        c.string()
        c.value(c.unpack("<I"))
    kv_end = f.tell()
    for _ in range(n_t):
        c.string()
        n_dims = c.unpack("<I")
        c.take(8 * n_dims + 4 + 8)
    return kv_end, f.tell()


# -- safetensors reader and index --------------------------------------------------------------
header_value = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-5, 2 ** 40), st.text(max_size=8),
              st.sampled_from(["F32", "F16", "BF16", "I8", "U8", "F64"])),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(
        st.sampled_from(["dtype", "shape", "data_offsets", "x"]), children, max_size=4),
    max_leaves=12)


@FUZZ
@given(header=st.dictionaries(st.text(max_size=12), header_value, max_size=5),
       data=st.binary(max_size=256), length_delta=st.integers(-8, 8))
def test_safetensors_reader_never_fails_but_cleanly(header, data, length_delta):
    from edgellm.exporters.io.safetensors_reader import SafetensorsFile

    raw = json.dumps(header).encode()
    p = scratch() / "x.safetensors"
    p.write_bytes(struct.pack("<Q", max(0, len(raw) + length_delta)) + raw + data)
    f = bounded(SafetensorsFile, p)
    if f is not None:
        for name in f.tensors:
            bounded(f.read, name)


SHARD_NAMES = st.one_of(st.text(max_size=40), st.sampled_from(
    ["../outside.safetensors", "/etc/passwd", "..", ".", "model.safetensors", "sub/model.safetensors",
     "link.safetensors", "a\x00b", "outside.safetensors"]))


@FUZZ
@given(weight_map=st.dictionaries(st.text(max_size=10), SHARD_NAMES, max_size=4))
def test_a_sharded_index_never_reads_outside_the_folder(weight_map):
    from edgellm.exporters.io.checkpoint import open_checkpoint
    from safetensors.numpy import save_file
    import numpy as np

    root = scratch()
    folder = root / "model"
    folder.mkdir()
    save_file({"inside": np.zeros(2, np.float32)}, str(folder / "model.safetensors"))
    save_file({"SECRET": np.ones(2, np.float32)}, str(root / "outside.safetensors"))
    (folder / "link.safetensors").symlink_to(root / "outside.safetensors")
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    ckpt = bounded(open_checkpoint, folder)
    assert ckpt is None or "SECRET" not in ckpt.names()


# -- manifest and bundle opener ----------------------------------------------------------------
def _meta(data: bytes) -> dict:
    return {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}


manifest_value = st.one_of(st.none(), st.booleans(), st.integers(-2, 3), st.floats(allow_nan=True),
                           st.text(max_size=12), st.lists(st.integers(), max_size=2),
                           st.dictionaries(st.text(max_size=6), st.integers(), max_size=2))


@FUZZ
@given(changes=st.dictionaries(st.sampled_from(["format", "version", "artifact", "files", "choice",
                                                "prediction", "model", "verification"]),
                               manifest_value, max_size=3),
       names=st.lists(st.sampled_from(["m.gguf", "../m.gguf", "/etc/passwd", "tokenizer.json", "", "manifest.json",
                                       "x" * 300, "sub/x"]), max_size=3))
def test_the_bundle_opener_never_fails_but_cleanly(changes, names):
    from edgellm.runtime.backend import recorded_choice
    from edgellm.runtime.bundle import open_bundle

    b = scratch() / "b"
    b.mkdir()
    (b / "m.gguf").write_bytes(VALID_GGUF[:2048])
    files = {"m.gguf": _meta(VALID_GGUF[:2048])}
    for n in names:
        files[n] = _meta(b"")
    manifest = {"format": "edgellm-bundle", "version": 1, "artifact": "m.gguf",
                "choice": {"version": 2, "format": "gguf", "quant": "F16", "kv_cache": "f16", "block_size": None,
                           "calibrated": False, "target": "cpu", "int8_levels": None}, "files": files, **changes}
    (b / "manifest.json").write_text(json.dumps(manifest))
    bundle = bounded(open_bundle, b)
    if bundle is not None:
        bounded(recorded_choice, bundle)
        bundle.close()


# -- config parsing and planning ---------------------------------------------------------------
CONFIG_KEYS = ["hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "head_dim",
               "intermediate_size", "vocab_size", "max_position_embeddings", "rope_theta", "rms_norm_eps",
               "tie_word_embeddings", "rope_scaling", "sliding_window", "layer_types", "model_type",
               "architectures", "partial_rotary_factor", "text_config", "rope_parameters", "use_sliding_window",
               "sliding_window_pattern", "no_rope_layers", "final_logit_softcapping"]
config_value = st.one_of(st.none(), st.booleans(), st.integers(-3, 2 ** 34), st.floats(allow_nan=True),
                         st.text(max_size=10), st.lists(st.one_of(st.integers(0, 3), st.text(max_size=4)), max_size=40),
                         st.sampled_from(["llama", "qwen2", "gemma3", "phi3", "gpt2", "smollm3", "granite", "mistral"]),
                         st.dictionaries(st.sampled_from(["rope_type", "factor", "type", "rope_theta"]),
                                         st.one_of(st.text(max_size=6), st.floats(), st.integers()), max_size=3))
BASES = ["Qwen--Qwen2.5-0.5B-Instruct", "google--gemma-3-1b-it", "microsoft--Phi-3-mini-4k-instruct",
         "meta-llama--Llama-3.2-1B-Instruct", "HuggingFaceTB--SmolLM3-3B"]


@FUZZ
@given(base=st.sampled_from(BASES), changes=st.dictionaries(st.sampled_from(CONFIG_KEYS), config_value, max_size=4))
def test_config_parsing_and_planning_never_fail_but_cleanly(base, changes):
    from edgellm import devices
    from edgellm.models.families import from_config_dict
    from edgellm.plan import planner

    cfg = json.loads((CORPUS.parent.parent / f"edgellm/models/examples/{base}.json").read_text())
    model = bounded(from_config_dict, {**cfg, **changes}, "fuzzed")
    if model is not None:
        device = devices.find("rpi5")
        budgets = bounded(planner.budgets_for, device, None, None, None, model)
        if budgets is not None:
            bounded(planner.plan, model, device, budgets)


# -- device profiles ---------------------------------------------------------------------------
toml_value = st.one_of(st.integers(-2, 2 ** 40), st.floats(allow_nan=True), st.text(max_size=8),
                       st.booleans(), st.lists(st.text(max_size=6), max_size=3))


@FUZZ
@given(section=st.sampled_from(["", "memory", "cpu", "budgets", "accelerator", "x"]),
       key=st.sampled_from(["name", "ram", "bandwidth", "cores", "isa", "usable_fraction", "threads",
                            "provider", "max_memory", "min_decode_tps", "context", "gflops"]),
       value=toml_value)
def test_device_profiles_never_fail_but_cleanly(section, key, value):
    from edgellm.devices.catalog import load_file

    base = (CORPUS.parent.parent / "device_profiles" / "rpi5-8gb.toml").read_text()
    rendered = json.dumps(value) if not isinstance(value, float) or math.isfinite(value) else "nan"
    text = base + (f"\n[{section}]\n" if section else "\n") + f"{key} = {rendered}\n"
    p = scratch() / "d.toml"
    p.write_text(text)
    bounded(load_file, p)


# -- model cards (YAML front matter) -----------------------------------------------------------
yaml_piece = st.sampled_from(["a: &x [1, 2, 3]\n", "b: [*x, *x, *x, *x]\n", "c: &y [*b, *b, *b, *b]\n",
                              "d: [*y, *y, *y, *y, *y]\n", "e: {<<: *x}\n", "f: &z {k: *z}\n", "- item\n",
                              "license: mit\n", "tags: [a, b]\n", "g: " + "[" * 40 + "]" * 40 + "\n",
                              "h: !!python/object/apply:os.system [x]\n", "i: 0x" + "f" * 30 + "\n", "j: |\n  text\n",
                              "? [k]\n: v\n", "k: !!binary AAAA\n", "\t", ":", "*", "&", "---\n", "'", "\n"])


@FUZZ
@given(pieces=st.lists(yaml_piece, max_size=12), junk=st.text(max_size=40))
def test_card_front_matter_never_fails_but_cleanly(pieces, junk):
    from edgellm.exporters.gguf.card import CardRefused, parse_front_matter

    t0 = time.monotonic()
    try:
        data = parse_front_matter("---\n" + "".join(pieces) + junk + "\n---\n# card\n")
        assert data is None or isinstance(data, dict)
    except CardRefused:
        pass
    assert time.monotonic() - t0 < SECONDS


# -- data files (--data, --calib-data) ---------------------------------------------------------
@FUZZ
@given(data=st.one_of(st.binary(max_size=64), st.text(max_size=32).map(lambda t: t.encode())),
       upto=st.one_of(st.none(), st.integers(0, 80)))
def test_the_data_file_reader_never_fails_but_cleanly(data, upto):
    import edgellm.core.files as fsutil

    p = scratch() / "data.txt"
    p.write_bytes(data)
    text = bounded(fsutil.read_text, p, fsutil.MAX_TEXT_BYTES, upto)
    if text is not None:
        whole = data.decode("utf-8", errors="replace").replace("\r\n", "\n").replace("\r", "\n")
        assert whole.startswith(text) and (upto is not None or text == whole)
    elif upto is None:
        with pytest.raises(UnicodeDecodeError):
            data.decode("utf-8")


@pytest.fixture(autouse=True, scope="module")
def _clean_scratch():
    yield
    import shutil
    for p in Path(tempfile.gettempdir()).glob("edgellm-fuzz-*"):
        shutil.rmtree(p, ignore_errors=True)


# -- chat templates ----------------------------------------------------------------------------
template_atom = st.one_of(
    st.integers(-10**12, 10**12).map(str), st.text(max_size=6).map(repr),
    st.sampled_from(["messages[0]['content']", "bos_token", "range(99999)", "[1, 2]", "'%9999999d'",
                     "'{:>9999999}'", "dict(a=1)", "lipsum", "namespace(x=1)", "(9 ** 9)"]))
TEMPLATE_OPS = ["({a} * {b})", "({a} ** {b})", "({a} + {b})", "({a} ~ {b})", "({a} % {b})",
                "({a} | center({b}))", "({a} | join({b}))", "({a} | format({b}))", "({a} | list)",
                "({a} | string)", "({a} | wordwrap({b}))", "({a} | indent({b}))", "({a} | batch({b}))",
                "({a} | replace({a}, {b}))", "({a}.ljust({b}))", "('{{:>{{}}}}'.format({a}, {b}))",
                "({a} | sum)", "({a} | tojson)", "({a} | map('string') | join)"]
template_expr = st.recursive(template_atom, lambda inner: st.tuples(st.sampled_from(TEMPLATE_OPS), inner, inner).map(
    lambda t: t[0].format(a=t[1], b=t[2])), max_leaves=6)


@FUZZ
@given(expr=template_expr)
def test_chat_templates_never_fail_but_cleanly(expr):
    """Any composition of the operations that build values renders, or is refused in one line, within
    the render's time bound; the answer is bounded."""
    from edgellm.runtime.tokenizer import MAX_PROMPT_CHARS, MAX_RENDER_SECONDS, render_chat

    t0 = time.monotonic()
    out = bounded(render_chat, "{{ " + expr + " }}", [{"role": "user", "content": "hi"}], True, "t")
    assert time.monotonic() - t0 < MAX_RENDER_SECONDS + 1
    assert out is None or len(out) <= MAX_PROMPT_CHARS


# -- what a remote machine answers -------------------------------------------------------------
json_leaf = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=True),
                      st.text(max_size=12), st.sampled_from(["pp", "tg", "\x1b[31m", "../../x", "1e999"]))
json_value = st.recursive(json_leaf, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.sampled_from(
        ["test", "n_depth", "edgellm", "measured", "depth", "decode_tps", "prefill_tps", "bundle", "model_type",
         "n_prompt", "n_gen", "avg_ts", "x"]), inner, max_size=6)), max_leaves=20)


@FUZZ
@given(data=st.one_of(json_value, st.lists(json_value, min_size=2, max_size=4)))
def test_remote_profile_answers_never_fail_but_cleanly(data):
    """Whatever JSON the far side of ``profile --remote`` sends, its checker returns records or
    refuses in one line naming the field (edgellm's own error), quickly."""
    from edgellm.remote import checked_records

    out = bounded(checked_records, data, "host", "b")
    assert out is None or all(r["edgellm"]["bundle"] == "b" for r in out)


def _leaf_paths(obj, prefix=()):
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _leaf_paths(v, prefix + (k,))
    elif isinstance(obj, list) and obj:
        for i, v in enumerate(obj):
            yield from _leaf_paths(v, prefix + (i,))
    else:
        yield prefix


@FUZZ
@given(picks=st.lists(st.tuples(st.integers(0, 10**6), json_value), min_size=1, max_size=4))
def test_remote_profile_answers_mutated_from_a_valid_one_never_fail_but_cleanly(picks):
    """A valid answer with a few of its fields replaced by anything: accepted, or one line."""
    import copy

    from edgellm.remote import checked_records
    from test_remote_hostile import _records

    data = copy.deepcopy(_records())
    for at, value in picks:
        paths = list(_leaf_paths(data))
        *head, last = paths[at % len(paths)]
        obj = data
        for k in head:
            obj = obj[k]
        obj[last] = value
    bounded(checked_records, data, "host", "b")
