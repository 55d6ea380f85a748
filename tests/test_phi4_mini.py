"""Phi-4-mini's kind of model (issue 29, item 4): phi3 with a partial rotary embedding, long-rope
scaling whose long factors take over past the original context, a tied head and the o200k split.
GGUF and ONNX exports are checked against transformers at short positions (the export's own
verification) and past the original context (``edgellm eval`` over windows longer than it)."""

from __future__ import annotations

import json

import pytest

ORIGINAL, CONTEXT = 512, 2048


@pytest.fixture(scope="module")
def phi4(tmp_path_factory):
    from edgellm.exporters.demo_models import build_phi4_mini
    return build_phi4_mini(tmp_path_factory.mktemp("phi4-mini"), original_context=ORIGINAL, context=CONTEXT)


def test_the_long_factors_matter_past_the_original_context(phi4):
    """Without this the checks below could not fail: transformers turns a sequence longer than the
    original context with the long factors, at every position, and that moves the logits."""
    import torch
    from transformers import AutoModelForCausalLM

    m = AutoModelForCausalLM.from_pretrained(phi4, dtype=torch.float32)
    ids = torch.randint(0, 700, (1, ORIGINAL + 64), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        long = m(ids).logits[0, :128].log_softmax(-1)
        short = m(ids[:, :128]).logits[0].log_softmax(-1)
    assert float((short.exp() * (short - long)).sum(-1).mean()) > 0.05


@pytest.mark.parametrize("fmt,quant", [("gguf", "F16"), ("onnx", "fp32")])
def test_phi4_mini_exports_and_matches_at_short_and_long_positions(cli, phi4, tmp_path, fmt, quant):
    out = tmp_path / "b"
    r = cli("export", str(phi4), "--device", "laptop-x86-16gb", "--format", fmt, "--quant", quant, "-o", str(out))
    assert r.returncode == 0, r.stderr
    v = json.loads((out / "manifest.json").read_text())["verification"]
    assert v["tokenizer"].startswith("identical") and v["logits_max_rel_diff"] < 0.05
    assert v["held_out"]["mean_kld"] < 1e-3                        # 512-token windows: short factors
    if fmt == "gguf":
        from gguf import GGUFReader

        g = GGUFReader(next(out.glob("*.gguf")))
        assert int(g.fields["phi3.rope.dimension_count"].parts[-1][0]) == 48      # 3/4 of 64
        assert g.fields["tokenizer.ggml.pre"].parts[-1].tobytes().decode() == "gpt-4o"
        assert {t.name: int(t.shape[0]) for t in g.tensors if t.name.startswith("rope_factors")} == \
            {"rope_factors_long.weight": 24, "rope_factors_short.weight": 24}
    for context in (1024,):                      # past the original context of 512 (within: verification)
        r = cli("eval", str(out), "--reference", str(phi4), "--context", str(context), "--windows", "1", "--json")
        assert r.returncode == 0, r.stderr
        res = json.loads(r.stdout)
        assert res["mean_kld"] < 1e-3 and res["top1_agreement"] > 0.97, (context, res)


def test_wrong_long_rope_tables_are_one_line_and_no_bundle(cli, phi4, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(phi4, bad)
    cfg = json.loads((bad / "config.json").read_text())
    cfg["rope_parameters"]["long_factor"] = cfg["rope_parameters"]["long_factor"][:-1]
    (bad / "config.json").write_text(json.dumps(cfg))
    for fmt in ("gguf", "onnx"):
        out = tmp_path / f"out-{fmt}"
        r = cli("export", str(bad), "--device", "laptop-x86-16gb", "--format", fmt, "--quant",
                    "F16" if fmt == "gguf" else "fp32", "-o", str(out))
        assert r.returncode == 2, r.stderr
        assert "'long_factor' must be 24 positive numbers" in r.stderr and len(r.stderr.strip().splitlines()) == 1
        assert not (out / "manifest.json").exists()


def test_the_plan_sizes_partial_rotary_and_the_npu_graph_refuses_it(phi4):
    from edgellm.formats.onnx_layout import rotary_bytes
    from edgellm.models.families.shape import FORMAT_ENTRIES
    from edgellm.models import load_config

    model = load_config(str(phi4))
    assert rotary_bytes(model) == 2 * 2 * CONTEXT * 24 * 4          # short and long pairs, 24 wide
    from edgellm.models.families.registry import family_of
    fam = family_of(model)
    assert fam.rotary_dim == 48 and fam.longrope_switch == ORIGINAL
    assert "rope scaling 'longrope' is not supported" in FORMAT_ENTRIES["onnx-npu"].family_problem(fam, "the NPU build")
    assert FORMAT_ENTRIES["onnx"].family_problem(fam, "ONNX export") is None
    assert FORMAT_ENTRIES["gguf"].family_problem(fam, "GGUF export") is None
