"""Predictions for one build on one device: artifact bytes, peak memory, prefill and decode speed.

Speed, where the device profile has measured kernels for the build's runtime ([kernels], written
by ``edgellm device measure``): each tensor at its own type's measured cost per row and per weight
(edgellm/devices/kernel_model.py), plus attention over the cache at its measured rate.
Otherwise a roofline: decode reads every weight byte once per token (plus the KV cache so far)
and does two FLOPs per weight; its time is the larger of bytes / bandwidth and FLOPs / the
kernels' rate.  Prefill is compute-bound: it is timed on FLOPs alone.  Both are predicted where
``edgellm profile`` measures them: a 512-token prompt, then 128 generated tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

from edgellm.devices.schema import Accelerator, DeviceProfile
from edgellm.models.config import ModelConfig
from edgellm.formats.choice import BuildChoice
from edgellm.formats import BuildFormat, format_for
from edgellm.devices.kernel_model import decode_seconds, loads, prefill_seconds
from edgellm.formats.runtimes import RUNTIMES, KernelRates

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
    # the speeds' basis: "measured" (this device's [kernels] for every weight type the build has),
    # "partly measured" (``estimated_types`` stream at the bandwidth instead) or "estimate" (the
    # roofline from bandwidth and the fp32 rate, with kernel shares taken on another machine)
    speed_basis: str = "estimate"
    estimated_types: tuple[str, ...] = ()
    speed_source: str = ""              # where measured figures come from

    @property
    def speed_measured(self) -> bool:
        return self.speed_basis == "measured"


def _flops_per_token(model: ModelConfig, position: int) -> float:
    """Matrix FLOPs for one token plus attention over ``position`` cached tokens."""
    matmul = model.decode_matmul_elements      # a tied head is token_embd, counted once
    return 2 * matmul + model.attention_flops(position)


def _head_elements(model: ModelConfig) -> int:
    return model.hidden * model.vocab


def _units(device: DeviceProfile, fmt: BuildFormat, choice: BuildChoice) -> list[tuple[str, float, KernelRates]]:
    """Where this build can run: (label, peak ops/s, kernel shares)."""
    runtime = RUNTIMES[fmt.runtime]
    units = []
    if runtime.name in device.runtimes and not fmt.accelerator_only:
        units.append(("cpu", device.cpu.effective_fp32,
                      runtime.rates(fmt.kernel_family(choice.quant), device.cpu.int8_dot)))
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
    # a state that does not grow with the context (LFM2's convolutions) is float32 in llama.cpp
    return int(model.kv_elements(context, fmt.windowed_cache) * fmt.kv_element_bytes(choice)) + 4 * model.state_elements


def _measured(model: ModelConfig, device: DeviceProfile, fmt: BuildFormat, choice: BuildChoice, prompt: int,
              position: int, prefill_flops_s: float) -> tuple[float, float, tuple[str, ...], str] | None:
    """(prefill tok/s, decode tok/s, the types with no measured rate, the rates' source) from the
    device's measured kernels, or None without them.
    A tensor type the profile has no rate for streams at the bandwidth (decode) and the
    roofline's rate (prefill)."""
    runtime = fmt.runtime
    cost, typed = device.kernel(runtime), fmt.typed_tensors(model, choice)
    if cost is None or typed is None:
        return None
    load = loads(model, typed)
    rates = {ty: r for ty in load if (r := device.kernel(f"{runtime}:{ty}")) is not None}
    bandwidth = device.memory.effective_bandwidth
    per_weight = {ty: fmt.bytes_per_weight(ty) / bandwidth for ty in load}
    t_decode = decode_seconds(load, rates, cost, per_weight, model.n_layers)
    t_prefill = prefill_seconds(load, rates, prompt, {ty: 2 / prefill_flops_s for ty in load})
    if model.head_dim:                      # the prompt's attention, where measured apart from the rates
        t_prefill += cost.prefill_attention_seconds(choice.kv_cache.value, model.head_dim,
                                                    model.prompt_head_positions(prompt)) or 0.0
    flops = model.attention_flops(position)
    per_head = cost.attention_seconds(choice.kv_cache.value, model.head_dim, flops / (4 * model.head_dim)) \
        if model.head_dim else None
    if per_head is not None:                # measured for this cache type and head size
        t_decode += per_head
    elif cost.attention_gflops:             # attention over the cache at its measured FLOP rate
        t_decode += flops / (cost.attention_gflops * 1e9)
    else:                                   # the cache read at the bandwidth
        t_decode += kv_bytes(model, choice, position) / bandwidth
    missing = tuple(sorted(ty for ty in load if ty not in rates))
    source = next((r.source for r in rates.values() if r.source), cost.source)
    return prompt / t_prefill, 1.0 / t_decode, missing, source


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
    best = None
    for label, peak, rates in units:
        flops = prefill_flops(model, prompt)
        measured = _measured(model, device, fmt, choice, prompt, position, peak * rates.prefill) \
            if label == "cpu" else None
        if measured is not None:
            prefill, decode, missing, source = measured
            basis = ("partly measured" if missing else "measured", missing, source)
        else:
            basis = ("estimate", (), "")
            t_mem = (read + kv_bytes(model, choice, position)) / bandwidth
            t_compute = _flops_per_token(model, position) / (peak * rates.decode)
            decode = 1.0 / (max(t_mem, t_compute) + runtime.per_token_overhead_s)
            t_prefill = max(flops / (peak * rates.prefill), weights / bandwidth)
            prefill = prompt / t_prefill
        if best is None or decode >= best[2]:     # a tie goes to the accelerator: it frees the CPU
            best = (label, prefill, decode, basis)
    label, prefill, decode, (basis, missing, source) = best
    return Estimate(choice=choice, file_bytes=file_bytes, tensor_types=dict(sorted(hist.items())),
                    memory=memory, prefill_tps=prefill, decode_tps=decode, unit=label,
                    speed_basis=basis, estimated_types=missing, speed_source=source)
