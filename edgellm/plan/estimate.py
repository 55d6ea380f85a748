"""Predictions for one build on one device: artifact bytes, peak memory, prefill and decode speed.

Speed is a roofline.  Decode reads every weight byte once per token (plus the KV cache so far)
and does two FLOPs per weight; its time is the larger of bytes / bandwidth and FLOPs / the
kernels' rate.  Prefill is compute-bound: it is timed on FLOPs alone.  Both are predicted where
``edgellm profile`` measures them: a 512-token prompt, then 128 generated tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

from edgellm.devices.schema import Accelerator, DeviceProfile
from edgellm.models.config import ModelConfig
from edgellm.plan.build import BuildChoice
from edgellm.plan.formats import BuildFormat, format_for
from edgellm.plan.runtimes import RUNTIMES, KernelRates

PROMPT_TOKENS = 512
GEN_TOKENS = 128
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


def _flops_per_token(model: ModelConfig, position: int) -> float:
    """Matrix FLOPs for one token plus attention over ``position`` cached tokens."""
    matmul = model.decode_matmul_elements      # a tied head is token_embd, counted once
    attn = 4 * model.n_heads * model.head_dim * sum(
        position if w is None else min(position, w) for w in (model.windows or (None,) * model.n_layers))
    return 2 * matmul + attn


def _head_elements(model: ModelConfig) -> int:
    return model.hidden * model.vocab


def _units(device: DeviceProfile, fmt: BuildFormat, choice: BuildChoice) -> list[tuple[str, float, KernelRates]]:
    """Where this build can run: (label, peak ops/s, kernel shares)."""
    runtime = RUNTIMES[fmt.runtime]
    units = []
    if runtime.name in device.runtimes and not fmt.accelerator_only:
        family = "float" if fmt.is_float(choice.quant) else "quant"
        units.append(("cpu", device.cpu.effective_fp32, runtime.rates(family, device.cpu.int8_dot)))
    for acc in device.accelerators:
        if _accepts(acc, fmt, choice):
            units.append((f"{acc.kind}:{acc.name}", acc.compute, ACCEL_RATES[acc.kind]))
    return units


def _accepts(acc: Accelerator, fmt: BuildFormat, choice: BuildChoice) -> bool:
    """GPUs take the runtime's ordinary build; an NPU only the build laid out for it."""
    if choice.format not in acc.formats or acc.runtime != fmt.runtime:
        return False
    if (acc.kind == "npu") != fmt.accelerator_only:
        return False
    return not acc.weight_types or choice.quant in acc.weight_types


def prefill_flops(model: ModelConfig, prompt: int) -> float:
    """Every layer matrix for each prompt token, the head once (last token only)."""
    return prompt * (_flops_per_token(model, prompt // 2) - 2 * _head_elements(model)) + 2 * _head_elements(model)


def kv_bytes(model: ModelConfig, choice: BuildChoice, context: int) -> int:
    fmt = format_for(choice)
    return int(model.kv_elements(context, fmt.windowed_cache) * fmt.kv_element_bytes(choice))


def estimate(model: ModelConfig, device: DeviceProfile, choice: BuildChoice, context: int) -> Estimate | None:
    """Predict one build; None when the device has no runtime or accelerator for it."""
    fmt = format_for(choice)
    units = _units(device, fmt, choice)
    if not units:
        return None
    runtime = RUNTIMES[fmt.runtime]
    weights, read, hist = fmt.weights(model, choice)
    file_bytes = fmt.file_bytes(model, choice)
    memory = Memory(weights=weights, kv_cache=kv_bytes(model, choice, context),
                    compute=runtime.compute_buffer(model, context), runtime=runtime.fixed_overhead)

    prompt = min(PROMPT_TOKENS, max(context - GEN_TOKENS, 1))
    position = min(prompt + GEN_TOKENS // 2, context)
    bandwidth = device.memory.effective_bandwidth
    measured = device.kernel(f"{runtime.name}:{choice.quant}")
    best = None
    for label, peak, rates in units:
        flops = prefill_flops(model, prompt)
        if label == "cpu" and measured is not None:
            # this type's kernels as measured on the device (device measure --kernels)
            t_mem = (read + kv_bytes(model, choice, position)) / (bandwidth * measured.decode_bandwidth_share)
            decode = 1.0 / (t_mem + runtime.per_token_overhead_s)
            prefill = prompt / max(flops / (measured.prefill_gflops * 1e9), weights / bandwidth)
        else:
            t_mem = (read + kv_bytes(model, choice, position)) / bandwidth
            t_compute = _flops_per_token(model, position) / (peak * rates.decode)
            decode = 1.0 / (max(t_mem, t_compute) + runtime.per_token_overhead_s)
            t_prefill = max(flops / (peak * rates.prefill), weights / bandwidth)
            prefill = prompt / t_prefill
        if best is None or decode >= best[2]:     # a tie goes to the accelerator: it frees the CPU
            best = (label, prefill, decode)
    label, prefill, decode = best
    return Estimate(choice=choice, file_bytes=file_bytes, tensor_types=dict(sorted(hist.items())),
                    memory=memory, prefill_tps=prefill, decode_tps=decode, unit=label)
