"""ONNX for ONNX Runtime / onnxruntime-genai: the CPU graph (fp32, fp16, int8, int4 in blocks) and
the fixed-shape static QDQ graph a QNN NPU runs."""

from __future__ import annotations

from collections import Counter

import edgellm.formats.onnx_layout as onnx_layout
from edgellm.formats.quality import predict
from edgellm.formats.base import F16_TOLERANCE, FP32_TOLERANCE, BuildFormat
from edgellm.formats.choice import BuildChoice, Format, KVCache, OnnxQuant, Target
from edgellm.formats.registry import register


@register
class Onnx(BuildFormat):
    """edgellm's graph of ONNX Runtime's fused contrib ops (exporters/onnx/graph.py): float32 KV
    cache; int4 in MatMulNBits blocks (of the build's size), int8 in MatMulNBits blocks of 32."""
    key = "onnx"
    format = Format.ONNX
    runtime = "onnxruntime"
    exporter = "edgellm.exporters.onnx.export:OnnxWriter"
    backend = "edgellm.runtime.onnxrt:OnnxModel"
    runtime_label, runtime_package = "ONNX Runtime", "onnxruntime"
    quant_enum = OnnxQuant
    suffix = ".onnx"
    quants = tuple(OnnxQuant)
    float_quants = (OnnxQuant.FP32, OnnxQuant.FP16)
    calibration_note = "ONNX int4 has one"
    BLOCK_SIZES = (16, 32, 64, 128)
    PLANNED_BLOCKS = (32, 128)           # the plan's table lists these; export takes any of BLOCK_SIZES
    # GroupQueryAttention turns as many dimensions as its cos table is wide; long-rope's two tables
    # are chosen by the sequence's length inside the graph (graph.py)
    rope_kinds = BuildFormat.rope_kinds + ("longrope", "su")
    partial_rotary = True

    def kernel_family(self, quant: str) -> str:
        return "float" if self.is_float(quant) else "quant"        # int8 and int4: MatMulNBits

    def candidates(self, device) -> list[BuildChoice]:
        out = [self.choice(OnnxQuant.FP32), self.choice(OnnxQuant.FP16), self.choice(OnnxQuant.INT8, device)]
        return out + [self.choice(OnnxQuant.INT4, block_size=b) for b in self.PLANNED_BLOCKS]

    def choice(self, quant, device=None, block_size=None, calibrated=False) -> BuildChoice:
        quant = OnnxQuant(quant)
        levels = int8_levels(device) if quant is OnnxQuant.INT8 else None
        block = (block_size or 32) if quant is OnnxQuant.INT4 else None
        return BuildChoice(self.format, quant, KVCache.F32, block, calibrated, int8_levels=levels)

    def leanest(self, device):
        # fewest weight bytes; fp16's file is small too but its weights are widened at load
        return [self.choice(OnnxQuant.INT4, block_size=128)]

    def validate(self, c: BuildChoice) -> None:
        if c.target is not Target.CPU:
            raise ValueError("this is the CPU ONNX format")
        if c.kv_cache is not KVCache.F32:
            raise ValueError("edgellm's ONNX graph keeps a float32 cache")
        if (c.block_size is not None) != (c.quant is OnnxQuant.INT4):
            raise ValueError("ONNX int4 takes a block size, and only int4 does")
        if c.block_size is not None and c.block_size not in self.BLOCK_SIZES:
            raise ValueError(f"ONNX int4 blocks are {', '.join(map(str, self.BLOCK_SIZES))} weights")
        if c.quant is OnnxQuant.INT8:
            if c.int8_levels not in (None, 63, 127):
                raise ValueError("ONNX int8 weights have 127 (8-bit) or 63 (7-bit) levels")
            if c.int8_levels is None:
                object.__setattr__(c, "int8_levels", 127)
        elif c.int8_levels is not None:
            raise ValueError("int8_levels is for ONNX int8 only")
        if c.calibrated and not self.calibratable(c.quant):
            raise ValueError(f"onnx {c.quant} has no calibrated form ({self.calibration_note})")

    def calibratable(self, quant: str) -> bool:
        return quant == OnnxQuant.INT4

    def takes_block(self, quant: str | None = None) -> bool:
        return quant is None or quant == OnnxQuant.INT4

    def weights(self, model, c):
        quant, block = str(c.quant), c.block_size
        total = onnx_layout.weight_bytes(model, quant, block, resident=True)
        emb = next(t for t in model.tensors if t.name == "token_embd.weight")
        gathered = onnx_layout.tensor_bytes(emb, quant, block, resident=True)
        shared = quant in ("int4", "int8") and model.tied_embeddings     # one set of blocks, read by the head
        read = total - onnx_layout.rotary_bytes(model) - (0 if shared else gathered)
        # a mixture of experts: a token reads the experts it is routed to, not the others
        read -= sum(onnx_layout.tensor_bytes(t, quant, block, resident=True) * (t.experts - t.used) // t.experts
                    for t in model.tensors if t.experts > 1)
        kind = {"fp32": "float32", "fp16": "float16", "int8": "int8", "int4": f"int4/{block}"}[quant]
        hist = Counter({kind: sum(t.is_matrix for t in model.tensors),
                        "float32": sum(not t.is_matrix for t in model.tensors)})
        return total, read, hist

    def choice_problem(self, model, c):
        if model.n_experts > 1 and c.quant == OnnxQuant.INT4:
            widths = sorted({t.ne0 for t in model.tensors if t.experts > 1})      # the experts' input widths
            if any(w % (c.block_size or 32) for w in widths):
                return (f"{model.name}: ONNX int4 blocks of {c.block_size or 32} do not divide the experts' rows "
                        f"({', '.join(map(str, widths))} weights); ONNX Runtime's QMoE needs whole blocks: "
                        "choose --block-size among 16, 32, 64, 128 that divides them, or int8")
        return None

    def kernel_type(self, c: BuildChoice) -> str:
        """The matrix kernels a build runs (runtime/onnx_probe.py measures them): fp16 weights are
        widened to fp32 at load."""
        return {OnnxQuant.INT4: f"int4/{c.block_size}", OnnxQuant.INT8: "int8"}.get(c.quant, "fp32")

    def typed_tensors(self, model, c):
        if c.target is not Target.CPU:
            return None
        ty = self.kernel_type(c)
        return [(t, ty if t.is_matrix and t.name != "position_embd.weight" else "fp32") for t in model.tensors]

    def bytes_per_weight(self, kernel_type):
        if kernel_type == "fp32":
            return 4.0
        block = 32 if kernel_type == "int8" else int(kernel_type.split("/")[1])
        bits = 8 if kernel_type == "int8" else 4
        return (block * bits / 8 + 4 + bits / 8) / block      # codes, a float scale, a packed zero point

    def file_bytes(self, model, c):
        return (onnx_layout.weight_bytes(model, str(c.quant), c.block_size)
                + onnx_layout.file_overhead(model, str(c.quant)))

    def noise_type(self, c) -> str:
        """The quality model's name for the build's weight type (formats/quality.py NOISE)."""
        if c.quant == OnnxQuant.FP32:
            return "F32"
        return f"onnx:int4/{c.block_size}" if c.quant == OnnxQuant.INT4 else f"onnx:{c.quant}"

    def quality(self, model, c):
        ty = self.noise_type(c)
        typed = [(t, ty) for t in model.tensors if t.quantizable]
        return predict(model, typed, "edgellm-onnx" if c.calibrated else None, label=ty)

    def tolerance(self, quant):
        return {OnnxQuant.FP32: FP32_TOLERANCE, OnnxQuant.FP16: F16_TOLERANCE}.get(OnnxQuant(quant))

    def app_runtime_lines(self, folder, first, lang):
        return [f"Runtime: onnxruntime-genai. It reads `genai_config.json`, `model.onnx`, `model.onnx.data` and the "
                f"tokenizer files of `{folder}`.", "",
                "```" + lang,
                *((f'val model = ai.onnxruntime.genai.Model("{folder}")', "val tokenizer = ai.onnxruntime.genai.Tokenizer(model)",
                   "val params = ai.onnxruntime.genai.GeneratorParams(model)  // then Generator(model, params)")
                  if lang == "kotlin" else
                  (f'let model = try OGAModel(path: "{folder}")', "let tokenizer = try OGATokenizer(model: model)",
                   "let params = try OGAGeneratorParams(model: model)  // then OGAGenerator(model:params:)")),
                "```"]


@register
class OnnxNpu(Onnx):
    """The fixed-shape static QDQ graph a QNN NPU runs (exporters/npu/static_graph.py, onnx_qdq.py):
    16-bit activations, int8 or int4 weights per output channel.  Offered only on devices with such
    an accelerator."""
    key = "onnx-npu"
    target = Target.NPU_STATIC
    exporter = "edgellm.exporters.npu.export:NpuWriter"
    backend = "edgellm.runtime.onnx_static:StaticOnnxModel"
    accelerator_only = True
    rope_kinds, partial_rotary = BuildFormat.rope_kinds, False     # one full-head table, fixed shapes
    quants = (OnnxQuant.INT8, OnnxQuant.INT4)
    float_quants = ()

    def candidates(self, device) -> list[BuildChoice]:
        if not any(a.kind == "npu" and "onnx" in a.formats for a in device.accelerators):
            return []
        return [self.choice(q) for q in self.quants]

    def choice(self, quant, device=None, block_size=None, calibrated=False) -> BuildChoice:
        return BuildChoice(self.format, quant, KVCache.F32, target=self.target)

    def leanest(self, device):
        return self.candidates(device)[-1:]

    def validate(self, c: BuildChoice) -> None:
        if c.quant not in self.quants:
            raise ValueError(f"the NPU build takes int8 or int4 weights; not {c.quant}")
        if c.block_size is not None or c.int8_levels is not None or c.calibrated:
            raise ValueError("the NPU build has per-channel weights: no block size, levels or calibration")
        if c.kv_cache is not KVCache.F32:
            raise ValueError("the NPU build keeps a float32 cache")

    def calibratable(self, quant: str) -> bool:
        return False

    def takes_block(self, quant: str | None = None) -> bool:
        return False

    def weights(self, model, c):
        # per-channel weights: the CPU layout's int8 columns, or int4 of blocks as long as a row
        # (known gap: the static file also stores the head separately)
        if c.quant == OnnxQuant.INT8:
            return super().weights(model, BuildChoice(Format.ONNX, OnnxQuant.INT8, KVCache.F32))
        return super().weights(model, BuildChoice(Format.ONNX, OnnxQuant.INT4, KVCache.F32, 128))

    def file_bytes(self, model, c):
        if c.quant == OnnxQuant.INT8:
            return super().file_bytes(model, BuildChoice(Format.ONNX, OnnxQuant.INT8, KVCache.F32))
        return super().file_bytes(model, BuildChoice(Format.ONNX, OnnxQuant.INT4, KVCache.F32, 128))

    def noise_type(self, c) -> str:
        return "onnx:int8" if c.quant == OnnxQuant.INT8 else "onnx:int4/channel"



def int8_levels(device) -> int:
    """ONNX int8 weight range for the device: 7-bit on x86 CPUs without VNNI, whose uint8 x int8
    kernel can overflow 16-bit pair sums with full 8-bit weights (ONNX Runtime's reduce_range).
    Recorded in the build choice; the 8-bit MatMulNBits blocks int8 builds use since issue 26 keep
    full 8-bit weights (their kernels widen before summing), as bundles of DynamicQuantizeMatMul
    read it."""
    if device is None:
        return 127
    isa = set(device.cpu.isa)
    x86 = bool(isa & {"sse4_2", "avx", "avx2", "avx512f"})
    return 63 if x86 and not isa & {"avx_vnni", "avx512_vnni", "amx"} else 127
