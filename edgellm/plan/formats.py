"""The format registry: everything that differs between GGUF, ONNX and the ONNX NPU build.

Each format says which builds it offers on a device, which are valid, what their weights weigh and
what the runtime reads per token, the KV cache element size, the expected quality, how strictly
verification compares it, which exporter writes it and which runtime backend runs it.  Nothing
outside these classes dispatches on format or quant names; a new format is one more class here
(plus its exporter and backend).  Light: numpy-free, no torch, as the planner runs on the device.
"""

from __future__ import annotations

from collections import Counter
from typing import ClassVar

from edgellm.models.config import ModelConfig
from edgellm.plan import onnx_layout
from edgellm.plan.build import BuildChoice, Format, GgufQuant, KVCache, OnnxQuant, Target
from edgellm.plan.ggml_types import TYPES
from edgellm.plan.gguf_recipes import tensor_types

# Verification tolerances: max |logit difference| / std(reference logits) for unquantized files.
# F16 rounding measures 0.005-0.03 on the test models (Gemma 2's logit softcap compresses the
# spread, so it sits at the top); conversion bugs (a missed rotary permutation, Gemma's norm
# offset) give 0.5 or more.  float32 graphs differ from torch only in summation order: 1e-5.
F16_TOLERANCE = 0.05
FP32_TOLERANCE = 1e-3


FORMATS: dict[str, "BuildFormat"] = {}


def register(cls):
    """Class decorator: ``cls`` (a ``BuildFormat``) joins the registry under its ``key``.  The
    built-in formats below register this way, and so does a format defined anywhere else (a
    plugin, a test): the CLI's choices, the build choice's validation, the manifest's format, the
    device profiles' runtimes, the exporter, the runtime backend and the app packaging all read
    the registry."""
    entry = cls()
    if entry.key in FORMATS and type(FORMATS[entry.key]) is not cls:
        raise ValueError(f"a format {entry.key!r} is registered already")
    FORMATS[entry.key] = entry
    from edgellm.core.names import FORMAT_NAMES, RUNTIME_NAMES
    from edgellm.plan.runtimes import RUNTIMES

    if entry.runtime_model is not None:
        RUNTIMES.setdefault(entry.runtime, entry.runtime_model)
    if entry.runtime not in RUNTIMES:
        del FORMATS[entry.key]
        raise ValueError(f"format {entry.key!r}: its runtime {entry.runtime!r} has no rates (give runtime_model)")
    RUNTIME_NAMES.add(entry.runtime)
    FORMAT_NAMES.add(str(entry.format))
    return cls


def unregister(key: str) -> None:
    """Take a format out of the registry again (a test's own format, when the test is done)."""
    FORMATS.pop(key, None)


def resolved(spec):
    """An exporter or backend given as an object, or as "module:attr" imported only now (the
    exporters need the host toolchain, which the device does not have)."""
    if not isinstance(spec, str):
        return spec
    import importlib

    module, attr = spec.split(":")
    return getattr(importlib.import_module(module), attr)


class BuildFormat:
    key: ClassVar[str]                   # the registry's key; what a model family's ``supports`` names
    format: ClassVar[str]                # the manifest's and the CLI's name (several keys may share one)
    target: ClassVar[Target] = Target.CPU
    runtime: ClassVar[str]               # plan/runtimes.py name
    exporter: ClassVar[object]           # "module:function" (imported only when exporting) or the function
    backend: ClassVar[object]            # "module:class" of the runtime backend, or the class
    quant_enum: ClassVar[type]           # the format's weight types (a StrEnum)
    suffix: ClassVar[str | None] = None  # a bare file of this format (``eval FILE``): its suffix
    families: ClassVar[frozenset[str] | None] = None   # model types it builds; None: the families say
    splittable: ClassVar[bool] = False   # ``package --split`` can cut its artifact in parts
    runtime_model: ClassVar[object] = None   # a new runtime's rates (plan/runtimes.Runtime); None: a known one
    runtime_label: ClassVar[str | None] = None   # how reports name the runtime (None: ``runtime``)
    runtime_package: ClassVar[str | None] = None  # the Python package whose version reports record
    accelerator_only: ClassVar[bool] = False   # runs on an accelerator, never on the CPU
    windowed_cache: ClassVar[bool] = False     # the runtime keeps only a sliding window's tokens
    quants: ClassVar[tuple[str, ...]]
    float_quants: ClassVar[tuple[str, ...]]

    # -- choices ------------------------------------------------------------------------------
    def candidates(self, device) -> list[BuildChoice]:
        raise NotImplementedError

    def leanest(self, device) -> list[BuildChoice]:
        """The builds with the least memory (the advice's bisections ask only these)."""
        raise NotImplementedError

    def validate(self, c: BuildChoice) -> None:
        """Raise ValueError naming what is wrong with ``c`` for this format."""
        if c.block_size is not None:
            raise ValueError(f"{c.format} {c.quant} has no block size")
        if c.int8_levels is not None:
            raise ValueError("int8_levels is for ONNX int8 only")
        if c.calibrated and not self.calibratable(c.quant):
            raise ValueError(f"{c.format} {c.quant} has no calibrated form ({self.calibration_note})")

    calibration_note: ClassVar[str] = ""

    def calibratable(self, quant: str) -> bool:
        return False

    def takes_block(self, quant: str | None = None) -> bool:
        """Whether ``quant`` (any quant of the format, when None) has a block size to choose."""
        return False

    def kernel_family(self, quant: str) -> str:
        """Which of the runtime's kernel rates (runtimes.py) a build's weights run at."""
        return "float" if self.is_float(quant) else "quant"

    def is_float(self, quant: str) -> bool:
        return quant in self.float_quants

    def choice(self, quant: str, device=None, block_size: int | None = None,
               calibrated: bool = False) -> BuildChoice:
        """The build of ``quant`` this format makes for ``device`` (defaults filled in)."""
        raise NotImplementedError

    # -- sizes --------------------------------------------------------------------------------
    def weights(self, model: ModelConfig, c: BuildChoice) -> tuple[int, int, Counter]:
        """(resident weight bytes, bytes read per decoded token, tensor type histogram)."""
        raise NotImplementedError

    def typed_tensors(self, model: ModelConfig, c: BuildChoice):
        """(TensorSpec, ggml type) per tensor where the runtime's kernels are measured per type
        ([kernels] of a device profile); None for formats without such rates."""
        return None

    def file_bytes(self, model: ModelConfig, c: BuildChoice) -> int:
        raise NotImplementedError

    def kv_element_bytes(self, c: BuildChoice) -> float:
        return 4.0

    # -- quality and verification -------------------------------------------------------------
    def quality(self, c: BuildChoice):
        raise NotImplementedError

    def tolerance(self, quant: str) -> float | None:
        """Logit tolerance for verification; None for lossy builds (then KLD is measured)."""
        return None

    def model_problem(self, model: ModelConfig) -> str | None:
        """Why this format cannot build ``model``; None when it can.  A built-in format asks the
        model's family (its ``supports``); a format that lists its ``families`` answers itself."""
        if self.families is None:
            from edgellm.models.families import family_of
            return family_of(model).build_problem(self.key)
        if model.model_type not in self.families:
            return (f"{model.name}: {self.key} does not support '{model.model_type}' yet; "
                    f"supported: {', '.join(sorted(self.families))}")
        return None

    # -- apps ---------------------------------------------------------------------------------
    def app_runtime_lines(self, folder: str, first: str, lang: str) -> list[str]:
        """INTEGRATION.md's lines on loading the package in an app (``lang``: kotlin or swift);
        ``first``: the artifact's first file.  Names are safe for code (packaging checks them)."""
        return [f"Runtime: {self.runtime}. Load `{folder}/{first}` with it."]


@register
class Gguf(BuildFormat):
    key = "gguf"
    format = Format.GGUF
    runtime = "llama.cpp"
    windowed_cache = True                # llama.cpp's SWA cache (GroupQueryAttention keeps all)
    exporter = "edgellm.exporters.gguf.export:export_gguf"
    backend = "edgellm.runtime.llamacpp:LlamaCppModel"
    runtime_label, runtime_package = "llama.cpp", "llama-cpp-python"
    quant_enum = GgufQuant
    suffix = ".gguf"
    splittable = True
    quants = tuple(GgufQuant)
    float_quants = (GgufQuant.F16,)
    calibration_note = "GGUF types below F16 have one"
    KV = {KVCache.F16: 2.0, KVCache.Q8_0: 34 / 32}

    def candidates(self, device) -> list[BuildChoice]:
        return [BuildChoice(self.format, q, kv) for q in self.quants for kv in self.KV]

    def choice(self, quant, device=None, block_size=None, calibrated=False) -> BuildChoice:
        return BuildChoice(self.format, quant, KVCache.F16, calibrated=calibrated)

    def leanest(self, device):
        return [BuildChoice(self.format, GgufQuant.Q2_K, KVCache.Q8_0)]

    def validate(self, c: BuildChoice) -> None:
        super().validate(c)
        if c.kv_cache not in self.KV:
            raise ValueError(f"GGUF caches are {', '.join(self.KV)}; not {c.kv_cache}")
        if c.target is not Target.CPU:
            raise ValueError("GGUF builds have no NPU target")

    def calibratable(self, quant: str) -> bool:
        return quant not in self.float_quants

    def typed_tensors(self, model, c):
        return tensor_types(model, c.quant)

    def weights(self, model, c):
        total = read = 0
        hist: Counter = Counter()
        for t, ty in tensor_types(model, c.quant):
            nbytes = TYPES[ty].row_bytes(t.ne0) * t.ne1
            total += nbytes
            hist[ty] += 1
            if not model.gathered_only(t.name):
                read += nbytes
        return total, read, hist

    def file_bytes(self, model, c):
        """Weights, plus header, hyperparameters, tensor index and tokenizer.  The tokenizer
        dominates: about 30 bytes per token for byte-level BPE (token, type, merges), within 1 MB
        of the 3.6 MB llama.cpp wrote for a 151,936-token vocabulary (shared/anchors.md)."""
        return self.weights(model, c)[0] + 64 * 1024 + 30 * model.vocab + 96 * len(model.tensors)

    def kv_element_bytes(self, c):
        return self.KV[c.kv_cache]

    def quality(self, c):
        from edgellm.plan import quality
        return quality.gguf(c.quant, c.calibrated, c.kv_cache)

    def tolerance(self, quant):
        return F16_TOLERANCE if quant in self.float_quants else None

    def app_runtime_lines(self, folder, first, lang):
        split = " (the other parts beside it are found by llama.cpp itself)" if "-of-" in first else ""
        return [f"Runtime: a llama.cpp binding (llama.android, llama.swiftui, llama.rn). Load `{folder}/{first}`{split}; "
                "the chat template is inside the GGUF (`tokenizer.chat_template`), so the binding's chat API uses it.", "",
                "```" + lang, (f'val model = LLamaAndroid.instance().load("{folder}/{first}")' if lang == "kotlin" else
                               f'let context = try LlamaContext.create_context(path: "{folder}/{first}")'), "```"]


@register
class Onnx(BuildFormat):
    """edgellm's graph of ONNX Runtime's fused contrib ops (exporters/onnx/graph.py): float32 KV
    cache; int4 in MatMulNBits blocks; int8 per output column (no blocks)."""
    key = "onnx"
    format = Format.ONNX
    runtime = "onnxruntime"
    exporter = "edgellm.exporters.onnx.export:export_onnx"
    backend = "edgellm.runtime.onnxrt:OnnxModel"
    runtime_label, runtime_package = "ONNX Runtime", "onnxruntime"
    quant_enum = OnnxQuant
    suffix = ".onnx"
    quants = tuple(OnnxQuant)
    float_quants = (OnnxQuant.FP32, OnnxQuant.FP16)
    calibration_note = "ONNX int4 has one"
    BLOCK_SIZES = (16, 32, 64, 128)
    PLANNED_BLOCKS = (32, 128)           # the plan's table lists these; export takes any of BLOCK_SIZES

    def kernel_family(self, quant: str) -> str:
        return "float" if self.is_float(quant) else ("int8" if quant == OnnxQuant.INT8 else "quant")

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
        shared = quant == "int4" and model.tied_embeddings     # one set of blocks, read by the head
        read = total - onnx_layout.rotary_bytes(model) - (0 if shared else gathered)
        kind = {"fp32": "float32", "fp16": "float16", "int8": "int8", "int4": f"int4/{block}"}[quant]
        hist = Counter({kind: sum(t.is_matrix for t in model.tensors),
                        "float32": sum(not t.is_matrix for t in model.tensors)})
        return total, read, hist

    def file_bytes(self, model, c):
        return (onnx_layout.weight_bytes(model, str(c.quant), c.block_size)
                + onnx_layout.file_overhead(model, str(c.quant)))

    def quality(self, c):
        from edgellm.plan import quality
        return quality.onnx(c.quant, c.block_size, c.calibrated)

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
    exporter = "edgellm.exporters.npu.export:export_npu"
    backend = "edgellm.runtime.onnx_static:StaticOnnxModel"
    accelerator_only = True
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

    def quality(self, c):
        from edgellm.plan import quality
        return quality.onnx_npu(c.quant)


def format_for(choice: BuildChoice) -> BuildFormat:
    return entry(choice.format, choice.target)


def entry(fmt: str, target=Target.CPU) -> BuildFormat:
    """The registry's entry for format name ``fmt`` and ``target``; ValueError when none."""
    for f in FORMATS.values():
        if f.format == fmt and f.target == target:
            return f
    raise ValueError(f"no format {fmt} for target {target} (formats: {', '.join(names())})")


def names() -> list[str]:
    """The format names a user can ask for (``--format``): the registry's, in its order."""
    return list(dict.fromkeys(str(f.format) for f in FORMATS.values()))


def expected_quality(choice: BuildChoice):
    """The quality the build's format expects of it (``plan/quality.py``'s tables)."""
    return format_for(choice).quality(choice)


def by_suffix(suffix: str) -> BuildFormat | None:
    """The CPU format whose bare files end in ``suffix`` (``eval model.gguf``)."""
    return next((f for f in FORMATS.values() if f.suffix == suffix and f.target == Target.CPU), None)


def formats_of(wanted: tuple[str, ...] | None) -> list[BuildFormat]:
    """The registry entries of the user's ``--format`` names (gguf, onnx: onnx includes the NPU
    build); None: every registered format."""
    return [f for f in FORMATS.values() if wanted is None or f.format in wanted]


def quant_names() -> dict[str, list[str]]:
    """Each format name's weight types, for ``--quant`` (the CPU builds': the NPU's are among them)."""
    out: dict[str, list[str]] = {}
    for f in FORMATS.values():
        out.setdefault(str(f.format), [])
        out[str(f.format)] += [str(q) for q in f.quants if str(q) not in out[str(f.format)]]
    return out


def int8_levels(device) -> int:
    """ONNX int8 weight range for the device: 7-bit on x86 CPUs without VNNI, whose uint8 x int8
    kernel can overflow 16-bit pair sums with full 8-bit weights (ONNX Runtime's reduce_range)."""
    if device is None:
        return 127
    isa = set(device.cpu.isa)
    x86 = bool(isa & {"sse4_2", "avx", "avx2", "avx512f"})
    return 63 if x86 and not isa & {"avx_vnni", "avx512_vnni", "amx"} else 127
