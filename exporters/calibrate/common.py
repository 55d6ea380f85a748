"""What every calibration pass shares: the statistics' record, the calibration text and its
windows, and the hooks that gather each linear layer's input statistics.  The package's ground
floor: it imports nothing else of the package."""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

from edgellm.errors import BadInput
from edgellm.textdata import text_ids

MIN_WINDOWS = 2
MIN_CHARS_PER_TOKEN = 1.0
CUT_TOKENS = 64             # tokens at the end of a cut text that may differ from the whole text's
# the head's logits are computed for this many bytes' worth of tokens at a time: 108 tokens of a
# 151,936-token vocabulary.  Each slice reads the whole head (544 MB in float32 for Qwen2.5-0.5B)
# forward and back: at 16 MB (27 tokens) the Qwen2.5-0.5B shape's head phase took 40.4 s on a
# 2-core Zen 3, at 64 MB 22.0 s, the file byte-identical and the export's peak RSS not higher
# (1.35 GB; the head phase is not the peak)
LOGITS_BYTES = 64 << 20
FISHER_WINDOWS = 4           # windows the Fisher diagonal is estimated on (None or 0: all).  The
                             # backward passes are 3/4 of the work: 4 of 16 windows take calibration
                             # from 5.4x llama-imatrix's time to 2.2x (benchmarks/RESULTS.md)
HESSIAN_WINDOWS = 16         # windows GPTQ's XᵀX is gathered on (None or 0: all).  The XᵀX of a
                             # layer's inputs costs more than the layer's forward (a 4,864-wide
                             # input: 2·4864² flops a token), so it is not gathered on every window
                             # of a long calibration text; see benchmarks/RESULTS.md for what more
                             # windows buy
SINK_QUEUE_BYTES = 64 << 20   # Fisher rows a sink working in the background may hold waiting (beyond
                             # one tensor): a GPU's backward pass outruns the cost table's thread
FISHER_PER = "token"         # "token": Σ_t g_t² x_t², a sample per token (fisher.TokenFisher),
                             # which keeps the bench model's calibrated KLD on 4 windows (within 1%
                             # of all 16 squared per window); "window": each window's squared gradient
                             # (what ``collect`` does; on 4 windows +23% KLD on the small model)


class Phases:
    """Seconds spent per named phase of a calibrated export, each counted once: a phase entered
    inside another (the cost table inside the backward pass) stops the outer one's clock while it
    runs.  The manifest records them, and the calibration benchmark prints them.  Each thread
    keeps its own nesting; phases that run in several threads at once (GPTQ's workers on a GPU)
    add up their threads' seconds, which can then exceed the wall time."""

    def __init__(self):
        import threading

        self.seconds: dict[str, float] = {}
        self._local = threading.local()         # per thread: [name, since] of the phases entered, innermost last
        self._lock = threading.Lock()

    @property
    def _open(self) -> list[list]:
        if not hasattr(self._local, "open"):
            self._local.open = []
        return self._local.open

    @contextmanager
    def __call__(self, name: str):
        self._stop_clock()
        self._open.append([name, time.perf_counter()])
        try:
            yield
        finally:
            self._stop_clock()
            self._open.pop()
            if self._open:
                self._open[-1][1] = time.perf_counter()

    def _stop_clock(self) -> None:
        if self._open:
            now = time.perf_counter()
            name, since = self._open[-1]
            with self._lock:
                self.seconds[name] = self.seconds.get(name, 0.0) + now - since
            self._open[-1][1] = now

    def to_dict(self) -> dict[str, float]:
        return {name: round(s, 3) for name, s in self.seconds.items()}


@dataclass
class Calibration:
    tokens: int
    windows: int
    context: int
    imatrix: dict[str, np.ndarray] = field(default_factory=dict)
    hessian: dict[str, np.ndarray] = field(default_factory=dict)
    fisher: dict[str, np.ndarray] = field(default_factory=dict)
    costs: object = None             # what the Fisher was turned into as it came (gguf.mix.Costs)
    device: str = "cpu"              # where it was computed
    precision: str = "float32"       # the matrix products' type (layers.compute_dtype)
    fisher_tokens: int = 0           # the tokens the Fisher diagonal was estimated on
    fisher_per: str = "window"       # its samples: a window's squared gradient, or each token's
    hessian_tokens: int = 0          # the tokens XᵀX was gathered on (0: all, or none asked for)
    phases: Phases = field(default_factory=Phases)     # where the time went (``Phases``)
    experts: dict = field(default_factory=dict)        # mixtures of experts: ``ExpertStats.summary``


def default_text(limit_bytes: int = 1 << 20) -> str:
    from edgellm.textdata import training_text
    return training_text(limit_bytes)


def calibration_windows(tok, text: str, context: int, max_windows: int) -> list[list[int]]:
    ids, chars_per_token = _leading_ids(tok, text, context * max_windows)
    unk = getattr(tok, "unk_token_id", None)
    n_unk = sum(i == unk for i in ids) if unk is not None else 0
    # text the tokenizer was built for takes 2-5 characters a token; far fewer means unknown
    # tokens or byte fallbacks: a script or vocabulary the model never saw
    if ids and (n_unk > 0.05 * len(ids) or chars_per_token < MIN_CHARS_PER_TOKEN):
        raise BadInput(f"the calibration text is not in the model's vocabulary ({chars_per_token:.2f} characters "
                       f"a token, {n_unk} unknown of {len(ids)}): give text like what the model will read")
    n = min(len(ids) // context, max_windows)
    if n < MIN_WINDOWS:
        raise BadInput(f"the calibration text is {len(ids)} tokens; calibration needs at least "
                       f"{MIN_WINDOWS} windows of {context} (give more text with --calib-data)")
    return [ids[i * context:(i + 1) * context] for i in range(n)]


def _leading_ids(tok, text: str, need: int) -> tuple[list[int], float]:
    """The first ``need`` token ids of ``text`` (all of them when it has fewer), and the
    characters a token of the part read.  The default text is 1 MB (300,000 tokens), 16 windows
    of 512 take 8,192: tokenizing all of it cost 1.7 s of each calibration.  A prefix counts as
    read when its ids and those of a prefix twice as long agree on every token wanted, the last
    few (which the cut may change) left out; else the prefix doubles, up to the whole text."""
    chars = max(4096, 8 * need)
    shorter = text_ids(tok, text[:chars]) if chars < len(text) else None
    while shorter is not None:
        longer = text_ids(tok, text[:2 * chars])
        keep = len(shorter) - CUT_TOKENS
        if keep >= need and longer[:keep] == shorter[:keep]:
            return shorter[:keep], chars / max(1, len(shorter))
        if 2 * chars >= len(text):
            return longer, len(text) / max(1, len(longer))
        chars, shorter = 2 * chars, longer
    ids = text_ids(tok, text)
    return ids, len(text) / max(1, len(ids))


def input_hooks(module, prefix: str, sums, counts, grams, shared, hessian, gram_rows: dict | None = None):
    """Forward hooks gathering, for every linear input of ``module`` (checkpoint names: ``prefix``
    + the module's own), the sum of x² per column, the row count and (``hessian``: a bool, or a
    callable asked at each input, e.g. whether this window is one of XᵀX's) XᵀX, its rows counted
    in ``gram_rows`` when given.  Layers reading the same input (q/k/v, gate/up) are recorded once
    and pointed at it in ``shared``.  Returns the hook handles and the holder of the last input
    seen (reset it between passes)."""
    import torch

    last = {"input": None, "name": None}
    handles = []
    for name, mod, _ in linear_inputs(module):
        def record(_mod, args, full=prefix + name):
            if args[0] is last["input"]:
                shared.setdefault(full, last["name"])
                return
            last["input"], last["name"] = args[0], full
            x = args[0].detach().reshape(-1, args[0].shape[-1]).float()
            kind = x.device.type
            low = kind == "cpu" and torch.is_autocast_enabled(kind) and torch.get_autocast_dtype(kind) == torch.bfloat16
            with torch.autocast(kind, enabled=False):     # sums in float32, whatever the products
                sums[full] = sums.get(full, 0) + (x * x).sum(0)
                counts[full] = counts.get(full, 0) + x.shape[0]
                if hessian() if callable(hessian) else hessian:     # in place: a 14,336-wide input's is 822 MB
                    with bf16_inputs(low):
                        add_gram(grams, full, x)
                    if gram_rows is not None:
                        gram_rows[full] = gram_rows.get(full, 0) + x.shape[0]
        handles.append(mod.register_forward_pre_hook(record))
    return handles, last


GRAM_BLOCKS = 8               # XᵀX of a wide input: its upper triangle in this many strips of rows
GRAM_MIN_BLOCKED = 2048       # narrower inputs: one product (the strips' overhead outweighs the saving)


@contextmanager
def bf16_inputs(on: bool):
    """float32 products on the CPU made by oneDNN from bfloat16-rounded inputs, accumulated and
    returned in float32 (``torch.backends.mkldnn.matmul.fp32_precision``), while ``on``."""
    import torch

    mm = getattr(getattr(torch.backends, "mkldnn", None), "matmul", None)
    if not on or mm is None or not hasattr(mm, "fp32_precision"):
        yield
        return
    before = mm.fp32_precision
    mm.fp32_precision = "bf16"
    try:
        yield
    finally:
        mm.fp32_precision = before


def add_gram(grams: dict, name: str, x) -> None:
    """grams[name] += xᵀx for the rows of ``x`` [tokens, n], the upper triangle (and what the
    strips cover below it) only for a wide input: strip i of rows takes x[:, i]ᵀ x[:, i:], so
    about (1 + 1/blocks) / 2 of the full product's work (a 4,864-wide input: 1.7x faster on a
    2-core EPYC).  ``gram_done`` makes it symmetric.

    The sum is float32 whatever the layers' products.  Where they are bfloat16 on a CPU
    (``bf16_inputs``, as the hooks call it) oneDNN rounds ``x`` to bfloat16 as the layer's own
    products do and accumulates and returns float32: the exact XᵀX of the rounded inputs, positive
    semi-definite, 2.8x faster on a 2-core EPYC (Zen 4).  A bfloat16 *result* would be 1.9x faster
    but rounds each entry by its own 2⁻⁹, which breaks positive definiteness where a few activation
    columns are hundreds of times the others (real SmolLM2-135M: GPTQ's Cholesky failed even in
    float64 with its 1% damping)."""
    import torch

    n = x.shape[1]
    if name not in grams:
        grams[name] = torch.zeros(n, n, dtype=torch.float32, device=x.device)
    g = grams[name]
    if n < GRAM_MIN_BLOCKED:
        g.addmm_(x.T, x)
        return
    step = -(-n // GRAM_BLOCKS)
    for a in range(0, n, step):
        g[a:a + step, a:].addmm_(x[:, a:a + step].T, x[:, a:])


def gram_done(g):
    """The symmetric XᵀX from what ``add_gram`` summed (its upper triangle is exact), in place."""
    n = g.shape[0]
    if n < GRAM_MIN_BLOCKED:
        return g
    step = -(-n // GRAM_BLOCKS)
    for a in range(0, n - step, step):          # a strip's own diagonal block is whole already
        g[a + step:, a:a + step] = g[a:a + step, a + step:].T
    return g


def spread(total: int, k: int | None) -> list[int]:
    """``k`` of ``total`` windows spread evenly over the text (all for None or 0)."""
    k = total if not k else min(total, k)
    return sorted({i * total // k for i in range(k)})


def linear_inputs(model):
    """(weight name in the checkpoint, module, transposed) for every matrix multiply with a weight:
    nn.Linear, GPT-2's Conv1D; a head tied to the embeddings is recorded under the embedding's name."""
    import torch

    names = {id(p): n for n, p in model.named_parameters()}     # tied parameters: the first name
    for mod_name, mod in model.named_modules():
        w = getattr(mod, "weight", None)
        if not isinstance(w, torch.nn.Parameter) or w.dim() != 2 or isinstance(mod, torch.nn.Embedding):
            continue
        if isinstance(mod, torch.nn.Linear):
            yield names[id(w)], mod, False
        elif type(mod).__name__ == "Conv1D":
            yield names[id(w)], mod, True


EXPERT_PRIOR_TOKENS = 8      # an expert's statistics are its routed tokens' plus this many tokens' worth of a prior


class ExpertStats:
    """Importance per input column of each expert of a mixture (transformers 5's fused experts
    module: ``gate_up_proj`` [experts, 2 x ffn, hidden], ``down_proj`` [experts, hidden, ffn],
    ``act_fn``), from the tokens the router sends to it, as llama.cpp's importance matrix counts
    them for its merged expert tensors: each expert sees only its own tokens, and its mean x² is
    over those.  Gathered by a hook on the experts module (its inputs: hidden states, the chosen
    experts); the down projection's input (act(gate) * up of the routed tokens) is recomputed
    there under the caller's autocast, as the module computes it.

    Few tokens make a noisy mean, and an expert no calibration token reached has none, so each
    expert's mean is shrunk toward a prior by ``EXPERT_PRIOR_TOKENS`` tokens' weight:
    - gate and up: the mean over every token entering the layer's experts (what any token brings:
      an expert's inputs are those, chosen by the router), so an unreached expert gets exactly it;
    - down: a flat importance at the expert's own mean, and an unreached expert none at all: it is
      rounded by ggml without importance weights, byte for byte as in the uncalibrated file (what
      llama.cpp's imatrix tools settled on for experts without data: ik_llama.cpp PR 202).
    """

    def __init__(self, gate_up_keys: tuple[str, ...], down_key: str, experts: int, hidden: int, ffn: int, device):
        import torch

        self.gate_up_keys, self.down_key, self.experts = gate_up_keys, down_key, experts
        z = lambda *shape: torch.zeros(*shape, dtype=torch.float32, device=device)      # noqa: E731
        self.x_sum, self.x_n = z(experts, hidden), z(experts)
        self.all_sum, self.all_n = z(hidden), 0
        self.a_sum, self.a_n = z(experts, ffn), z(experts)

    def record(self, mod, hidden, chosen) -> None:
        import torch
        import torch.nn.functional as F

        x = hidden.detach().reshape(-1, hidden.shape[-1])
        routed = torch.zeros(x.shape[0], self.experts, dtype=torch.bool, device=x.device)
        routed.scatter_(1, chosen.reshape(x.shape[0], -1).long().clamp(0, self.experts - 1), True)
        with torch.no_grad():
            xf = x.float()
            sq = xf * xf
            with torch.autocast(x.device.type, enabled=False):
                self.all_sum += sq.sum(0)
                self.all_n += x.shape[0]
                self.x_sum += routed.T.float() @ sq
                self.x_n += routed.sum(0).float()
            for e in routed.any(0).nonzero()[:, 0].tolist():
                tok = routed[:, e].nonzero()[:, 0]
                gate, up = F.linear(x[tok], mod.gate_up_proj[e]).chunk(2, dim=-1)
                a = (mod.act_fn(gate) * up).float()
                self.a_sum[e] += (a * a).sum(0)
                self.a_n[e] += tok.numel()

    def importance(self) -> dict[str, list]:
        """{checkpoint key: per expert, importance per column (or None: no weights)}."""
        k = EXPERT_PRIOR_TOKENS
        prior = (self.all_sum / max(1, self.all_n))[None, :]
        gate_up = ((self.x_sum + k * prior) / (self.x_n[:, None] + k)).cpu().numpy()
        n = self.a_n.cpu().numpy()
        own = (self.a_sum / self.a_n.clamp(min=1)[:, None]).cpu().numpy()
        down = [None if n[e] == 0 else ((own[e] * n[e] + k * own[e].mean()) / (n[e] + k)).astype(np.float32)
                for e in range(self.experts)]
        rows = [gate_up[e].astype(np.float32) for e in range(self.experts)]
        return {**{key: rows for key in self.gate_up_keys}, self.down_key: down}

    def summary(self) -> dict:
        n = self.x_n.cpu().numpy()
        return {"experts": self.experts, "unreached": int((n == 0).sum()), "min_tokens": int(n.min()),
                "median_tokens": float(np.median(n))}


def expert_hooks(module, prefix: str, parts, stats: dict) -> list:
    """A hook on every fused experts module in ``module`` gathering ``ExpertStats`` into
    ``stats`` (keyed by the module's name); ``parts`` (the family's ``checkpoint_parts``) names the
    checkpoint tensors the statistics belong to: expert 0's gate, up and down (the names a GGUF
    writer's stacked entry carries).  Returns the hook handles."""
    handles = []
    if parts is None:
        return handles
    for name, mod in module.named_modules():
        gu, dn = getattr(mod, "gate_up_proj", None), getattr(mod, "down_proj", None)
        if getattr(gu, "ndim", 0) != 3 or dn is None or not hasattr(mod, "act_fn"):
            continue
        full = prefix + name + "."
        gate_up, down = parts(full + "gate_up_proj"), parts(full + "down_proj")
        if not gate_up or not down:
            continue
        experts, ffn2, hidden = gu.shape

        def record(m, args, key=full, keys=(gate_up[0], down[0][0]), shape=(experts, hidden, ffn2 // 2)):
            if key not in stats:
                stats[key] = ExpertStats(*keys, *shape, args[0].device)
            stats[key].record(m, args[0], args[1])
        handles.append(mod.register_forward_pre_hook(record))
    return handles
