"""Predictions for one build on one device: artifact bytes, peak memory, prefill and decode speed.

Speed is a roofline.  Decode reads every weight byte once per token (plus the KV cache so far)
and does two FLOPs per weight; its time is the larger of bytes / bandwidth and FLOPs / the
kernels' rate.  Prefill is compute-bound: it is timed on FLOPs alone.  Both are predicted where
``edgellm profile`` measures them: a 512-token prompt, then 128 generated tokens.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from edgellm.devices.schema import Accelerator, DeviceProfile
from edgellm.models.config import ModelConfig
from edgellm.plan import onnx_layout
from edgellm.plan.choice import BuildChoice
from edgellm.plan.ggml_types import TYPES
from edgellm.plan.gguf_recipes import tensor_types
from edgellm.plan.runtimes import FORMAT_RUNTIME, RUNTIMES, KernelRates

PROMPT_TOKENS = 512
GEN_TOKENS = 128
KV_ELEMENT_BYTES = {"f16": 2.0, "q8_0": 34 / 32, "f32": 4.0}
# accelerator kernel shares of their peak: estimates until measured on the devices
ACCEL_RATES = {"gpu": KernelRates(decode=0.30, prefill=0.50), "npu": KernelRates(decode=0.10, prefill=0.30)}


@dataclass(frozen=True)
class Memory:
    weights: int
    kv_cache: int
    compute: int
    runtime: int

    @property
    def total(self) -> int:
        return self.weights + self.kv_cache + self.compute + self.runtime


@dataclass(frozen=True)
class Estimate:
    choice: BuildChoice
    file_bytes: int
    tensor_types: dict[str, int]        # ggml or ONNX type -> number of tensors
    memory: Memory
    prefill_tps: float
    decode_tps: float
    unit: str                           # "cpu" or "gpu:<name>" / "npu:<name>"


def _gguf_metadata_bytes(model: ModelConfig) -> int:
    """Header, hyperparameters, tensor index and tokenizer.  The tokenizer dominates: about 30
    bytes per token for byte-level BPE (token, type, merges), which is within 1 MB of the 3.6 MB
    llama.cpp wrote for a 151,936-token vocabulary (shared/anchors.md)."""
    return 64 * 1024 + 30 * model.vocab + 96 * len(model.tensors)


def _gguf_weights(model: ModelConfig, quant: str) -> tuple[int, int, Counter]:
    """(all weight bytes, bytes read per decoded token, type histogram)."""
    total = read = 0
    hist: Counter = Counter()
    for t, ty in tensor_types(model, quant):
        nbytes = TYPES[ty].row_bytes(t.ne0) * t.ne1
        total += nbytes
        hist[ty] += 1
        if not model.gathered_only(t.name):
            read += nbytes
    return total, read, hist


def _onnx_weights(model: ModelConfig, quant: str, block: int | None) -> tuple[int, int, Counter]:
    """(resident weight bytes, bytes read per decoded token, type histogram)."""
    total = onnx_layout.weight_bytes(model, quant, block, resident=True)
    emb = next(t for t in model.tensors if t.name == "token_embd.weight")
    gathered = onnx_layout.tensor_bytes(emb, quant, block, resident=True)
    shared = quant == "int4" and model.tied_embeddings     # one set of blocks, read by the head
    read = total - onnx_layout.rotary_bytes(model) - (0 if shared else gathered)
    kind = {"fp32": "float32", "fp16": "float16", "int8": f"int8/{block}", "int4": f"int4/{block}"}[quant]
    hist = Counter({kind: sum(t.is_matrix for t in model.tensors), "float32": sum(not t.is_matrix for t in model.tensors)})
    return total, read, hist


def _flops_per_token(model: ModelConfig, position: int) -> float:
    """Matrix FLOPs for one token plus attention over ``position`` cached tokens."""
    matmul = model.decode_matmul_elements      # a tied head is token_embd, counted once
    attn = 4 * model.n_heads * model.head_dim * sum(
        position if w is None else min(position, w) for w in (model.windows or (None,) * model.n_layers))
    return 2 * matmul + attn


def _head_elements(model: ModelConfig) -> int:
    return model.hidden * model.vocab


def _units(device: DeviceProfile, choice: BuildChoice) -> list[tuple[str, float, KernelRates]]:
    """Where this build can run: (label, peak ops/s, kernel shares)."""
    runtime = RUNTIMES[FORMAT_RUNTIME[choice.format]]
    family = "float" if choice.quant in ("F16", "fp16", "fp32") else "quant"
    units = []
    if runtime.name in device.runtimes:
        units.append(("cpu", device.cpu.effective_fp32, runtime.rates(family, device.cpu.int8_dot)))
    for acc in device.accelerators:
        if _accepts(acc, choice):
            units.append((f"{acc.kind}:{acc.name}", acc.compute, ACCEL_RATES[acc.kind]))
    return units


def _accepts(acc: Accelerator, choice: BuildChoice) -> bool:
    if choice.format not in acc.formats or acc.runtime != FORMAT_RUNTIME[choice.format]:
        return False
    return not acc.weight_types or choice.quant in acc.weight_types


def kv_bytes(model: ModelConfig, choice: BuildChoice, context: int) -> int:
    if choice.format == "onnx":
        per = onnx_layout.KV_BYTES[choice.quant]
    else:
        per = KV_ELEMENT_BYTES[choice.kv_cache]
    return int(model.kv_elements(context) * per)


def estimate(model: ModelConfig, device: DeviceProfile, choice: BuildChoice, context: int) -> Estimate | None:
    """Predict one build; None when the device has no runtime or accelerator for it."""
    units = _units(device, choice)
    if not units:
        return None
    runtime = RUNTIMES[FORMAT_RUNTIME[choice.format]]
    if choice.format == "gguf":
        weights, read, hist = _gguf_weights(model, choice.quant)
        file_bytes = weights + _gguf_metadata_bytes(model)
    else:
        weights, read, hist = _onnx_weights(model, choice.quant, choice.block_size)
        file_bytes = (onnx_layout.weight_bytes(model, choice.quant, choice.block_size)
                      + onnx_layout.file_overhead(model, choice.quant))
    memory = Memory(weights=weights, kv_cache=kv_bytes(model, choice, context),
                    compute=runtime.compute_buffer(model, context), runtime=runtime.fixed_overhead)

    prompt = min(PROMPT_TOKENS, max(context - GEN_TOKENS, 1))
    position = min(prompt + GEN_TOKENS // 2, context)
    bandwidth = device.memory.effective_bandwidth
    best = None
    for label, peak, rates in units:
        t_mem = (read + kv_bytes(model, choice, position)) / bandwidth
        t_compute = _flops_per_token(model, position) / (peak * rates.decode)
        decode = 1.0 / (max(t_mem, t_compute) + runtime.per_token_overhead_s)
        # prefill: every layer matrix for each prompt token, the head once (last token only)
        flops = prompt * (_flops_per_token(model, prompt // 2) - 2 * _head_elements(model)) + 2 * _head_elements(model)
        t_prefill = max(flops / (peak * rates.prefill), weights / bandwidth)
        prefill = prompt / t_prefill
        if best is None or decode >= best[2]:     # a tie goes to the accelerator: it frees the CPU
            best = (label, prefill, decode)
    label, prefill, decode = best
    return Estimate(choice=choice, file_bytes=file_bytes, tensor_types=dict(sorted(hist.items())),
                    memory=memory, prefill_tps=prefill, decode_tps=decode, unit=label)
