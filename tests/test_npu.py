"""NPU builds (a device whose plan runs the model on a QNN NPU): a fixed-shape static QDQ model,
every node one the QNN provider takes, run on the CPU provider and on the QNN HTP backend (the
simulator, on x86), verified, and runnable with `edgellm run` / `profile`."""

import json


NPU_DEVICE = "android-sd8gen3-12gb"


def export(run_cli, model, out, *flags):
    r = run_cli("export", str(model), "--device", NPU_DEVICE, "--format", "onnx", "-o", str(out), *flags,
                timeout=600)
    assert r.returncode == 0, r.stderr
    return json.loads((out / "manifest.json").read_text())


def test_int8_npu_build_is_static_qdq_and_runs_on_the_qnn_htp(cli, run_cli, tiny, tmp_path):
    m = export(cli, tiny("qwen2"), tmp_path / "b", "--quant", "int8")
    assert m["prediction"]["runs_on"] == "npu:hexagon-npu" and m["choice"]["target"] == "npu-static"
    npu = m["npu"]
    assert npu["static_shapes"]["tokens_per_step"] == 32 and npu["qnn_supported_ops"].startswith("all ")
    assert m["operators"]["QuantizeLinear"] > 0 and m["operators"]["DequantizeLinear"] > 0
    assert "GroupQueryAttention" not in m["operators"] and "MatMulNBits" not in m["operators"]
    assert npu["cpu_provider_vs_float"]["top1_agreement"] >= 0.8
    assert npu["qnn_htp"].startswith("ran on the QNN HTP backend"), npu["qnn_htp"]
    assert npu["qnn_htp_vs_cpu_provider"]["top1_agreement"] >= 0.8
    v = m["verification"]
    assert v["tokenizer"].startswith("identical") and v["held_out"]["mean_kld"] < 0.05


def test_npu_bundle_runs_and_profiles(cli, run_cli, tiny, tmp_path):
    export(cli, tiny("llama"), tmp_path / "b", "--quant", "int8", "--no-verify")
    r = run_cli("run", str(tmp_path / "b"), "-p", "def main(", "--max-tokens", "4", "--raw")
    assert r.returncode == 0, r.stderr
    r = run_cli("profile", str(tmp_path / "b"), "--prompt-tokens", "40", "--gen-tokens", "4", "--repeats", "1",
                "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)[0]["edgellm"]["measured"]["decode_tps"] > 0


def test_static_runtime_matches_transformers_in_float(tiny, tmp_path):
    """The fixed-shape graph and its padded, windowed loop give the original's logits."""
    import numpy as np
    import onnx
    import torch
    from transformers import AutoModelForCausalLM

    from edgellm import models
    from edgellm.exporters.io.checkpoint import open_checkpoint
    from edgellm.models.families import family_for
    from edgellm.exporters.onnx.graph import Reader
    from edgellm.exporters.npu.static_graph import build_static
    from edgellm.runtime.onnx_static import StaticOnnxModel

    folder = tiny("llama")
    model = models.load_config(str(folder))
    onnx.save(build_static(family_for(model, "onnx-npu"), Reader(open_checkpoint(folder)), 4, 32), str(tmp_path / "m.onnx"))
    ids = list(range(5, 19))                                   # 14 tokens: windows of 4, 4, 4, 2
    got = StaticOnnxModel(tmp_path / "m.onnx", 1, provider="cpu", tokenizer=False).logits(ids)
    hf = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    with torch.no_grad():
        ref = hf(torch.tensor([ids])).logits[0].numpy()
    assert np.abs(got - ref).max() < 1e-3


def test_unsupported_nodes_are_named_one_by_one():
    from onnx import TensorProto, helper

    from edgellm.exporters.npu.qdq import unsupported_nodes

    nodes = [helper.make_node("MatMul", ["x", "w"], ["y"], name="proj"),
             helper.make_node("GroupQueryAttention", ["y"], ["z"], name="attn", domain="com.microsoft"),
             helper.make_node("Einsum", ["z", "z"], ["o"], name="mix", equation="ij,ij->ij")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                          [helper.make_tensor_value_info("o", TensorProto.FLOAT, [1])])
    assert unsupported_nodes(helper.make_model(g)) == ["attn (GroupQueryAttention)", "mix (Einsum)"]


def test_families_the_static_graph_lacks_get_the_cpu_build_not_a_failed_npu_one(cli, run_cli, tiny, tmp_path):
    """qwen3's q/k norms are not in the static graph: the plan offers it no NPU build, so int8 on
    the phone is the CPU ONNX build, and nothing is attempted that export would refuse."""
    plan = json.loads(run_cli("plan", str(tiny("qwen3")), "--device", NPU_DEVICE, "--format", "onnx",
                              "--json").stdout)
    assert plan["candidates"] and not any(c["choice"]["target"] == "npu-static" for c in plan["candidates"])
    m = export(cli, tiny("qwen3"), tmp_path / "b", "--quant", "int8", "--no-verify")
    assert m["choice"]["target"] == "cpu" and m["prediction"]["runs_on"] == "cpu" and "npu" not in m
