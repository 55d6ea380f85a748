"""GGUF for llama.cpp: the nine file types, their tensor recipes and sizes, the F16/Q8_0 cache."""

from __future__ import annotations

from collections import Counter

from edgellm.core.ggml import kv_cache_block
from edgellm.formats.quality import predict
from edgellm.formats.base import F16_TOLERANCE, BuildFormat
from edgellm.formats.choice import BuildChoice, Format, GgufQuant, KVCache, Target
from edgellm.formats.ggml_types import TYPES
from edgellm.formats.gguf_recipes import tensor_types
from edgellm.formats.registry import register


@register
class Gguf(BuildFormat):
    key = "gguf"
    format = Format.GGUF
    runtime = "llama.cpp"
    fixed_architectures = True           # llama.cpp's graph per architecture
    calibrates_experts = True            # each expert's importance from the tokens routed to it
    windowed_cache = True                # llama.cpp's SWA cache (GroupQueryAttention keeps all)
    exporter = "edgellm.exporters.gguf.export:GgufWriter"
    backend = "edgellm.runtime.llamacpp:LlamaCppModel"
    scoring_rows = 64                    # runtime/llamacpp.SCORING_BATCH (tests/test_vocab_memory.py)
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

    def bytes_per_weight(self, kernel_type):
        return TYPES[kernel_type].block_bytes / TYPES[kernel_type].block

    def weights(self, model, c):
        total = read = 0
        hist: Counter = Counter()
        for t, ty in tensor_types(model, c.quant):
            row = TYPES[ty].row_bytes(t.ne0)
            total += row * t.ne1 * t.experts
            hist[ty] += 1
            if not model.gathered_only(t.name):
                read += row * t.active_rows          # a token reads its top-k experts only
        return total, read, hist

    def file_bytes(self, model, c):
        """Weights, plus header, hyperparameters, tensor index and tokenizer.  The tokenizer
        dominates: about 30 bytes per token for byte-level BPE (token, type, merges), within 1 MB
        of the 3.6 MB llama.cpp wrote for a 151,936-token vocabulary (shared/anchors.md)."""
        return self.weights(model, c)[0] + 64 * 1024 + 30 * model.vocab + 96 * len(model.tensors)

    def kv_element_bytes(self, c):
        return self.KV[c.kv_cache]

    def choice_problem(self, model, c):
        if model.head_dim % (block := kv_cache_block(c.kv_cache.value)):
            return (f"{model.name}: llama.cpp's {c.kv_cache} KV cache stores blocks of {block}, which do not divide "
                    f"this model's heads of {model.head_dim}; its builds keep an f16 cache")
        return None

    def exact_cache(self, c):
        return c.kv_cache is KVCache.F16

    def backend_options(self, c):
        # the plan's memory and speed are for this cache type; llama.cpp's own default is f16
        return {"kv_cache": c.kv_cache.value}

    def quality(self, model, c):
        typed = [(t, ty) for t, ty in tensor_types(model, c.quant) if t.quantizable]
        return predict(model, typed, "edgellm" if c.calibrated else None, str(c.kv_cache), str(c.quant))

    def tolerance(self, quant):
        return F16_TOLERANCE if quant in self.float_quants else None

    def app_runtime_lines(self, folder, first, lang):
        split = " (the other parts beside it are found by llama.cpp itself)" if "-of-" in first else ""
        return [f"Runtime: a llama.cpp binding (llama.android, llama.swiftui, llama.rn). Load `{folder}/{first}`{split}; "
                "the chat template is inside the GGUF (`tokenizer.chat_template`), so the binding's chat API uses it. "
                "Give the context the KV cache type `manifest.json` records (`choice.kv_cache`; for q8_0, flash attention "
                "on and the K and V cache types q8_0): the plan's memory and speed assume it, and llama.cpp's default is "
                "f16.", "",
                "```" + lang, (f'val model = LLamaAndroid.instance().load("{folder}/{first}")' if lang == "kotlin" else
                               f'let context = try LlamaContext.create_context(path: "{folder}/{first}")'), "```"]
