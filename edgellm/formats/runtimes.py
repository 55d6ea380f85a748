"""The runtimes a build runs on, and what each costs beyond the weights.

Kernel efficiencies turn a device's dense fp32 rate into the rate a runtime's kernels reach for
one weight type.  They are calibrated on one machine (2-core AMD EPYC, AVX2: numpy sgemm 182
GFLOP/s, 26 GB/s read) against the peers measured in shared/anchors.md: llama.cpp Q4_K_M on a
Qwen2.5-0.5B shape decodes at 40.4 tok/s and prefills at 125 tok/s; onnxruntime-genai int4 at 25
and 94.  A device whose int8 dot-product instructions are missing (Cortex-A72) gets half.
Other types are estimates until ``edgellm profile`` measures them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from edgellm.models.config import ModelConfig

MiB = 1 << 20
PROMPT_CHUNK = 512          # tokens per prefill batch (llama.cpp's default n_ubatch)


@dataclass(frozen=True)
class KernelRates:
    decode: float           # share of the fp32 rate reached by matrix-vector kernels
    prefill: float          # share reached by matrix-matrix kernels


class Runtime:
    name: ClassVar[str]
    fixed_overhead: ClassVar[int]        # interpreter + library, resident bytes
    per_token_overhead_s: ClassVar[float]

    def rates(self, weight_family: str, int8_dot: bool) -> KernelRates:
        raise NotImplementedError

    def compute_buffer(self, model: ModelConfig, context: int) -> int:
        raise NotImplementedError


class LlamaCpp(Runtime):
    """llama.cpp through llama-cpp-python: mmap'd weights, a KV cache and one compute buffer."""

    name = "llama.cpp"
    fixed_overhead = 45 * MiB            # estimate: Python interpreter, numpy, libllama
    per_token_overhead_s = 0.0003        # estimate: sampling and graph build per token

    def rates(self, weight_family: str, int8_dot: bool) -> KernelRates:
        if weight_family == "float":
            return KernelRates(decode=0.40, prefill=0.60)     # estimate
        # quantized: calibrated on Q4_K_M (anchors.md): 40.4 tok/s decode; 125 tok/s prefill of a
        # 128-token prompt, whose logits llama-bench computes for the last token only
        r = KernelRates(decode=0.22, prefill=0.49)
        return r if int8_dot else KernelRates(r.decode / 2, r.prefill / 2)

    def compute_buffer(self, model: ModelConfig, context: int) -> int:
        # ggml reserves the worst-case graph: logits for a whole batch dominate, plus the
        # widest intermediate activations (flash attention avoids the n_ctx x n_ctx scores).
        return 4 * PROMPT_CHUNK * (model.vocab + 2 * model.hidden + 2 * model.ffn) + model.vocab * 4


class OnnxRuntime(Runtime):
    """ONNX Runtime with edgellm's numpy generation loop."""

    name = "onnxruntime"
    fixed_overhead = 80 * MiB            # estimate: Python interpreter, numpy, onnxruntime
    per_token_overhead_s = 0.001         # estimate: one session.run and numpy sampling per token

    def rates(self, weight_family: str, int8_dot: bool) -> KernelRates:
        if weight_family == "float":
            return KernelRates(decode=0.10, prefill=0.30)     # estimate: fp16 kernels are weak on CPU
        # quantized: calibrated on edgellm's own onnxruntime backend (onnxruntime 1.32), Qwen2.5-0.5B
        # shape, 2 threads, 200 GFLOPS fp32 (benchmarks/plan_accuracy.py, issue 15): int4/32
        # (MatMulNBits) 54.3 tok/s decode, 287 tok/s prefill of 512 tokens.  int8 runs the same
        # MatMulNBits kernels with 8-bit blocks since issue 26 (an estimate: not measured yet).
        r = KernelRates(decode=0.30, prefill=1.06)
        return r if int8_dot else KernelRates(r.decode / 2, r.prefill / 2)

    def compute_buffer(self, model: ModelConfig, context: int) -> int:
        # activations of one prefill chunk: logits for every position, MLP intermediates, and
        # attention probabilities (chunk x context per head)
        chunk = min(PROMPT_CHUNK, context)
        return 4 * chunk * (model.vocab + 2 * model.hidden + 2 * model.ffn + model.n_heads * context)


RUNTIMES: dict[str, Runtime] = {r.name: r for r in (LlamaCpp(), OnnxRuntime())}
