"""Planner arithmetic against hand-computed values, and its fit / no-fit decisions."""

import dataclasses

import pytest

from edgellm import devices, models
from edgellm.devices.schema import Budgets as ProfileBudgets, Cpu, DeviceProfile, Memory
from edgellm.errors import BadInput
from edgellm.plan import planner
from edgellm.formats.choice import BuildChoice
from edgellm.plan.estimate import estimate
from edgellm.formats.ggml_types import TYPES
from edgellm.formats.gguf_recipes import tensor_types

MiB = 1 << 20


def board(bandwidth=10e9, flops=1e15, isa=("neon", "dotprod"), ram=8 << 30):
    return DeviceProfile(
        name="test-board", description="test", runtimes=("llama.cpp", "onnxruntime"),
        preferred_formats=("gguf", "onnx"),
        memory=Memory(ram=ram, app_share=0.5, bandwidth_measured=bandwidth),
        cpu=Cpu(name="test", arch="arm64", cores_big=4, isa=isa, fp32_measured=flops),
        budgets=ProfileBudgets(context=4096, min_decode_tps=5))


@pytest.fixture(scope="module")
def llama1b():
    return models.load_config("meta-llama/Llama-3.2-1B-Instruct")


def q8_bytes(m):
    return sum(TYPES[ty].row_bytes(t.ne0) * t.ne1 for t, ty in tensor_types(m, "Q8_0"))


def test_memory_is_weights_plus_kv_plus_buffers(llama1b):
    e = estimate(llama1b, board(), BuildChoice("gguf", "Q8_0", "f16"), 4096)
    assert e.memory.kv_cache == 2 * 16 * 8 * 64 * 4096 * 2 == 134_217_728
    assert e.memory.weights == q8_bytes(llama1b)
    assert e.memory.compute == 4 * 512 * (128256 + 2 * 2048 + 2 * 8192) + 128256 * 4
    assert e.memory.runtime == 45 * MiB
    assert e.memory.total == sum(dataclasses.astuple(e.memory))
    q8kv = estimate(llama1b, board(), BuildChoice("gguf", "Q8_0", "q8_0"), 4096)
    assert q8kv.memory.kv_cache == 134_217_728 // 2 * 34 // 32


def test_decode_is_bandwidth_bound_when_compute_is_plentiful(llama1b):
    e = estimate(llama1b, board(bandwidth=10e9), BuildChoice("gguf", "Q8_0", "f16"), 4096)
    kv_at_576 = 2 * 16 * 8 * 64 * 576 * 2             # 512-token prompt + half of 128 new tokens
    expected = 1 / ((q8_bytes(llama1b) + kv_at_576) / 10e9 + 0.0003)
    assert e.decode_tps == pytest.approx(expected, rel=1e-9)


def test_decode_is_compute_bound_when_bandwidth_is_plentiful(llama1b):
    e = estimate(llama1b, board(bandwidth=1e15, flops=100e9), BuildChoice("gguf", "Q8_0", "f16"), 4096)
    matmul = llama1b.n_params - (16 * 2 * 2048 + 2048)   # every matrix, the tied head included
    flops = 2 * matmul + 4 * 32 * 64 * 576 * 16
    assert e.decode_tps == pytest.approx(1 / (flops / (100e9 * 0.22) + 0.0003), rel=1e-9)
    slow = estimate(llama1b, board(bandwidth=1e15, flops=100e9, isa=("neon",)),
                    BuildChoice("gguf", "Q8_0", "f16"), 4096)
    assert slow.decode_tps < e.decode_tps * 0.55       # no int8 dot product: half the kernel rate


def test_untied_embedding_is_not_read_per_token():
    m = models.load_config("meta-llama/Llama-3.1-8B-Instruct")
    e = estimate(m, board(bandwidth=10e9), BuildChoice("gguf", "F16", "f16"), 4096)
    embd = 4096 * 128256 * 2
    assert 1 / e.decode_tps > (e.memory.weights - embd) / 10e9
    assert 1 / e.decode_tps < e.memory.weights / 10e9


def test_onnx_int4_sizes_follow_matmulnbits_blocks():
    m = models.load_config("Qwen/Qwen2.5-0.5B-Instruct")
    b32 = estimate(m, board(), BuildChoice("onnx", "int4", "f32", 32), 4096)
    b128 = estimate(m, board(), BuildChoice("onnx", "int4", "f32", 128), 4096)
    # 16 bytes of nibbles + 4 scale + 0.5 zero point per 32 weights, shared tied embedding, plus
    # float32 rotary tables for the whole context (32768 x 32 x 2)
    rotary = 2 * 32768 * 32 * 4
    assert b32.memory.weights - rotary == pytest.approx(m.n_params * 20.5 / 32, rel=0.01)
    assert b128.memory.weights < b32.memory.weights
    assert b32.memory.kv_cache == 2 * 24 * 2 * 64 * 4096 * 4   # float32 cache


def test_winner_is_best_quality_that_fits(llama1b):
    dev = board(bandwidth=20e9, flops=200e9)
    # no quality budget: what is under test is the ranking (the budget has its own tests)
    b = planner.Budgets(max_memory=1200 * MiB, min_decode_tps=1, context=4096, max_kld=float("inf"))
    p = planner.plan(llama1b, dev, b, advise=False)
    assert p.winner is not None and p.winner.fits
    better = [c for c in p.candidates if planner.quality_rank(c) < planner.quality_rank(p.winner)]
    assert better and all(not c.fits for c in better)
    assert all("budget" in c.verdict for c in better)


def test_lossless_builds_tie_and_the_fastest_wins(llama1b):
    p = planner.plan(llama1b, board(bandwidth=20e9, flops=200e9),
                     planner.Budgets(max_memory=6 << 30, min_decode_tps=1, context=4096), advise=False)
    assert p.winner.quality.kld < planner.LOSSLESS_KLD
    lossless = [c for c in p.candidates if c.quality.kld < planner.LOSSLESS_KLD]
    assert p.winner.estimate.decode_tps == max(c.estimate.decode_tps for c in lossless)
    assert p.winner.choice.quant != "F16"


def test_speed_budget_excludes_slow_builds(llama1b):
    p = planner.plan(llama1b, board(bandwidth=10e9, flops=1e15),
                     planner.Budgets(max_memory=6 << 30, min_decode_tps=9, context=4096), advise=False)
    assert p.winner.estimate.decode_tps >= 9
    f16 = next(c for c in p.candidates if c.choice == BuildChoice("gguf", "F16", "f16"))
    assert not f16.fits and "decode" in f16.verdict


def test_format_filter_and_device_runtimes(llama1b):
    p = planner.plan(llama1b, board(), planner.Budgets(6 << 30, 1, 4096), formats=("onnx",), advise=False)
    assert {c.choice.format for c in p.candidates} == {"onnx"}
    gguf_only = dataclasses.replace(board(), runtimes=("llama.cpp",))
    with pytest.raises(BadInput, match="no runtime for onnx"):
        planner.plan(llama1b, gguf_only, planner.Budgets(6 << 30, 1, 4096), formats=("onnx",))


def test_npu_runs_quantized_onnx_on_the_sd8gen3():
    m = models.load_config("Qwen/Qwen2.5-0.5B-Instruct")
    dev = devices.find("android-sd8gen3-12gb")
    p = planner.plan(m, dev, planner.budgets_for(dev, None, None, None), formats=("onnx",))
    units = {c.choice.label: c.estimate.unit for c in p.candidates}
    assert units["onnx int8 npu"] == "npu:hexagon-npu" and units["onnx int8"] == units["onnx fp16"] == "cpu"
    int8 = [c for c in p.candidates if c.choice.quant == "int8"]
    assert int8[0].choice.target == "npu-static"          # a tie in speed goes to the NPU: it frees the CPU


def test_nothing_fits_suggests_a_shorter_context():
    m = models.load_config("meta-llama/Llama-3.1-8B-Instruct")
    dev = devices.find("laptop-x86-16gb")
    p = planner.plan(m, dev, planner.budgets_for(dev, None, 1, 131072))
    assert p.winner is None
    assert any(s.startswith("a shorter context: --context") for s in p.suggestions)


def test_nothing_fits_suggests_a_student_and_bigger_devices():
    m = models.load_config("meta-llama/Llama-3.1-8B-Instruct")
    dev = devices.find("rpi5-4gb")
    p = planner.plan(m, dev, planner.budgets_for(dev, None, 1, 2048))
    student = next(s for s in p.suggestions if s.startswith("a distilled student"))
    assert "layers" in student
    bigger = next(s for s in p.suggestions if s.startswith("a bigger device"))
    named = [part.split(" (")[0] for part in bigger.removeprefix("a bigger device: ").split(", ")]
    assert named and all(devices.find(n).memory.ram > dev.memory.ram for n in named)


def test_students_keep_a_sensible_depth():
    m = models.load_config("meta-llama/Llama-3.1-70B-Instruct")
    dev = devices.find("rpi5-8gb")
    p = planner.plan(m, dev, planner.budgets_for(dev, None, None, None))
    student = next(s for s in p.suggestions if s.startswith("a distilled student"))
    layers = int(student.split("(")[1].split(" of ")[0])
    assert layers >= 10


def test_impossible_budgets_are_refused():
    m = models.load_config("Qwen/Qwen2.5-0.5B-Instruct")
    dev = devices.find("rpi5-8gb")
    with pytest.raises(BadInput, match="longer than .* supports"):
        planner.plan(m, dev, planner.budgets_for(dev, None, None, 10**6))
    with pytest.raises(BadInput, match="more than rpi5-8gb's 8 GiB of RAM"):
        planner.budgets_for(dev, 100 << 30, None, None)


def test_build_choice_round_trips_and_validates():
    c = BuildChoice("onnx", "int4", "f32", 32)
    assert BuildChoice.from_dict(c.to_dict()) == c
    with pytest.raises(ValueError):
        BuildChoice("gguf", "Q4_K_M", "f16", block_size=32)
    with pytest.raises(ValueError, match="unknown BuildChoice fields"):
        BuildChoice.from_dict({**c.to_dict(), "evil": 1})


def test_onnx_quality_follows_the_weight_type_and_block(llama1b):
    from edgellm.formats import expected_quality as expected

    kld = {(q, b): expected(BuildChoice("onnx", q, "f32", b), llama1b).kld
           for q, b in (("fp32", None), ("fp16", None), ("int8", None), ("int4", 32), ("int4", 64), ("int4", 128))}
    assert kld["fp32", None] <= kld["fp16", None] < kld["int8", None] < kld["int4", 32] < kld["int4", 128]
    assert kld["int4", 32] < kld["int4", 64] < kld["int4", 128]


def test_a_named_type_keeps_the_exact_f16_cache_unless_only_a_smaller_one_fits():
    """`export --quant Q` takes llama.cpp's own f16 cache when it fits (a q8_0 cache turned the real
    SmolLM2's near-tie answer to "What is the capital of France?" into French), and the q8_0 cache
    when only that fits the memory budget."""
    from edgellm.models.families import from_config_dict
    from edgellm.pipeline import BuildRequest, _candidates

    model = from_config_dict({"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 2048,
                              "intermediate_size": 5632, "num_hidden_layers": 22, "num_attention_heads": 32,
                              "num_key_value_heads": 32, "vocab_size": 32000, "max_position_embeddings": 32768},
                             "mha-1b")
    device = devices.find("laptop-x86-16gb")
    [(roomy, _)] = _candidates(BuildRequest("m", "laptop-x86-16gb", quant="Q4_K_M", context=4096), model, device, False)
    assert str(roomy.kv_cache) == "f16"
    f16 = planner.evaluate_choice(model, device, planner.budgets_for(device, None, None, 32768, model),
                                  BuildChoice("gguf", "Q4_K_M", "f16")).estimate.memory.total
    [(tight, _)] = _candidates(BuildRequest("m", "laptop-x86-16gb", quant="Q4_K_M", context=32768,
                                            max_memory=f16 - 1), model, device, False)
    assert str(tight.kv_cache) == "q8_0"                  # 32768 tokens of an MHA cache: only q8_0 fits
