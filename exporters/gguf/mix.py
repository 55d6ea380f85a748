"""Calibrated GGUF: importance-weighted rounding, and bytes spent where they cut KL divergence most.

llama.cpp's file types give every tensor of a category the same type by a fixed rule.  Given a
calibration (``calibrate.Calibration``), this module instead measures, for every matrix and every
candidate ggml type, how much KL divergence rounding it to that type would cost:

    cost(t, type) = ½ Σ F ⊙ (W − deq(quant(W, imatrix)))²

(the Fisher diagonal F predicts the loss of a small weight change; ``quant`` is ggml's own
quantizer with the calibration's importance matrix, ``deq`` its dequantizer), then
picks one type per tensor so the total is smallest for a byte budget — by default the bytes
llama.cpp's own recipe would spend for the requested file type, so the file is the same size.  The
choice is a knapsack solved greedily on each tensor's convex hull of (bytes, cost): always take the
upgrade that buys the most predicted KL divergence per byte.  Costs are estimated on a fixed sample
for large tensors: up to ``SAMPLE_ROWS`` rows (the rows whose Fisher the calibration computes),
and within them about ``SAMPLE_ELEMENTS`` weights as runs of a row that every candidate
quantizes on their own (a K-quant super-block of 256 columns; ``sample_unit``), the same number
of rows drawn for every run of columns and laid side by side, so the sample keeps the matrix's
columns and importance vector and is quantized in one call per type.  ggml quantizes a K-quant
super-block from its 256 values and their importance alone, so the estimate is unbiased; the
legacy types (Q4_0 … Q5_1) weight their rounding by the mean square of the row, which the
sample's row approximates.

Any type llama.cpp's CPU backend runs is a candidate; a file with per-tensor types is an ordinary
GGUF (llama-quantize writes such files itself with --tensor-type).
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from edgellm.exporters import host_memory
from edgellm.exporters.calibrate.common import SINK_QUEUE_BYTES, Phases
from edgellm.core.ggml import TYPES

# K-quant rows (multiples of 256) and the rest (multiples of 32)
CANDIDATES_256 = ("Q2_K", "Q3_K", "IQ4_XS", "Q4_K", "Q5_K", "Q6_K", "Q8_0")
CANDIDATES_32 = ("Q4_0", "Q4_1", "IQ4_NL", "Q5_0", "Q5_1", "Q8_0")
SAMPLE_ROWS = 2048
SAMPLE_ELEMENTS = 1 << 17        # weights a tensor's costs are estimated on: 512 super-blocks of 256


@dataclass(frozen=True)
class MixedTypes:
    types: dict[str, str]             # GGUF tensor name -> ggml type
    budget_bytes: int
    bytes: int
    predicted_kld: float              # Σ cost of the chosen types
    recipe_predicted_kld: float       # Σ cost of the recipe's own types, same importance weighting

    def to_dict(self) -> dict:
        counts: dict[str, int] = {}
        for t in self.types.values():
            counts[t] = counts.get(t, 0) + 1
        return {"budget_bytes": self.budget_bytes, "bytes": self.bytes, "predicted_kld": self.predicted_kld,
                "recipe_predicted_kld": self.recipe_predicted_kld, "type_counts": dict(sorted(counts.items()))}


def candidates(cols: int) -> tuple[str, ...]:
    return CANDIDATES_256 if cols % 256 == 0 else tuple(t for t in CANDIDATES_32 if cols % TYPES[t].block == 0)


def roundtrip(w: np.ndarray, ggml_type: str, imatrix: np.ndarray | None, threads: int = 1) -> np.ndarray:
    """``w`` [rows, cols] float32 through ggml's quantizer and back."""
    from edgellm.exporters.gguf.ggml_quant import dequantize, quantize_into, row_bytes

    if ggml_type in ("F32", "F16"):
        return w.astype(np.float16).astype(np.float32) if ggml_type == "F16" else w
    buf = np.empty(w.shape[0] * row_bytes(ggml_type, w.shape[1]), dtype=np.uint8)
    quantize_into(ggml_type, w, buf, threads=threads, imatrix=imatrix)
    return dequantize(ggml_type, buf, w.shape[1], threads)


def sampled_rows(rows: int, seed: int) -> np.ndarray | None:
    """The rows ``tensor_costs`` estimates a tensor of ``rows`` rows on (None: all of them)."""
    if rows <= SAMPLE_ROWS:
        return None
    return np.sort(np.random.default_rng(seed).choice(rows, SAMPLE_ROWS, replace=False))


def sample_unit(cols: int) -> int:
    """Columns of a row that every candidate type quantizes apart from the rest: a K-quant
    super-block where the row has them, else the widest run of 32-blocks (<= 256) dividing it."""
    return 256 if cols % 256 == 0 else max(u for u in range(32, 257, 32) if cols % u == 0)


def sampled_runs(rows: int, cols: int, seed: int) -> np.ndarray | None:
    """For a [rows, cols] matrix of more than ``SAMPLE_ELEMENTS`` weights, the rows drawn in each
    run of ``sample_unit(cols)`` columns: an index array [k, cols] (k rows drawn per run, the same
    row for a run's columns), so ``w[index, arange(cols)]`` is a [k, cols] sample whose columns,
    and importance, are the matrix's own.  None: all of the matrix."""
    unit = sample_unit(cols)
    runs = cols // unit
    per_run = max(1, SAMPLE_ELEMENTS // cols)
    if per_run >= rows:
        return None
    rng = np.random.default_rng([seed, 1])
    drawn = np.stack([np.sort(rng.choice(rows, per_run, replace=False)) for _ in range(runs)], 1)
    return np.repeat(drawn, unit, axis=1)


def tensor_costs(w: np.ndarray, fisher: np.ndarray | None, imatrix: np.ndarray | None, types, threads: int = 1,
                 seed: int = 0, rows: int | None = None) -> dict[str, float]:
    """Predicted KL divergence of each type for one matrix (GGUF layout, float16-rounded values).
    ``rows``: the tensor's row count when ``w`` (and ``fisher``) are already its ``sampled_rows``."""
    if rows is None:
        rows = w.shape[0]
        if (pick := sampled_rows(rows, seed)) is not None:
            w = w[pick]
            fisher = None if fisher is None else fisher[pick]
    if (runs := sampled_runs(w.shape[0], w.shape[1], seed)) is not None:
        cols = np.arange(w.shape[1])[None, :]
        w = w[runs, cols]
        fisher = None if fisher is None else fisher[runs, cols]
    import torch

    scale = rows / w.shape[0]
    weight = torch.from_numpy(np.ascontiguousarray(fisher, dtype=np.float32)) if fisher is not None else \
        torch.from_numpy(np.ascontiguousarray(imatrix if imatrix is not None else np.ones(w.shape[1]), np.float32))
    w = np.ascontiguousarray(w, dtype=np.float32)
    tw = torch.from_numpy(w)
    out = {}
    for t in types:                     # torch's products are threaded, numpy's elementwise work is not
        d2 = (tw - torch.from_numpy(roundtrip(w, t, imatrix, threads))).square_()
        total = torch.dot(weight.reshape(-1), d2.reshape(-1)) if weight.dim() == 2 else torch.dot(weight, d2.sum(0))
        out[t] = 0.5 * scale * float(total)
    return out


def allocate(costs: dict[str, dict[str, float]], sizes: dict[str, dict[str, int]], budget: int) -> dict[str, str]:
    """One type per tensor, total bytes <= ``budget``, Σ cost as small as the greedy hull walk finds."""
    hulls: dict[str, list[str]] = {}
    for name, c in costs.items():
        pts = sorted(c, key=lambda t: (sizes[name][t], c[t]))
        hull: list[str] = []
        for t in pts:                                     # lower convex hull, cost falling with bytes
            if hull and c[t] >= c[hull[-1]]:
                continue
            while len(hull) >= 2:
                a, b = hull[-2], hull[-1]
                s_ab = (c[a] - c[b]) / max(1, sizes[name][b] - sizes[name][a])
                s_bt = (c[b] - c[t]) / max(1, sizes[name][t] - sizes[name][b])
                if s_bt >= s_ab:
                    hull.pop()
                else:
                    break
            hull.append(t)
        hulls[name] = hull
    level = {n: 0 for n in hulls}
    spent = sum(sizes[n][h[0]] for n, h in hulls.items())
    if spent > budget:
        raise ValueError(f"even the smallest types need {spent} bytes, over the budget of {budget}")

    def gain(n: str) -> tuple[float, int] | None:
        h, i = hulls[n], level[n]
        if i + 1 >= len(h):
            return None
        db = sizes[n][h[i + 1]] - sizes[n][h[i]]
        return (costs[n][h[i]] - costs[n][h[i + 1]]) / max(1, db), db

    heap = [(-g[0], n) for n in hulls if (g := gain(n))]
    heapq.heapify(heap)
    while heap:
        _, n = heapq.heappop(heap)
        g = gain(n)
        if g is None:
            continue
        if spent + g[1] > budget:
            continue                      # this upgrade does not fit; smaller ones still may
        spent += g[1]
        level[n] += 1
        if (g2 := gain(n)) is not None:
            heapq.heappush(heap, (-g2[0], n))
    return {n: hulls[n][level[n]] for n in hulls}


def _matrix(ckpt, arch, entry, pick: np.ndarray | None = None) -> np.ndarray:
    """The matrix as the quantizer sees it (float16-rounded, see gguf_write); with ``pick`` only
    those rows (sorted; a tensor that needs no transform)."""
    if pick is None:
        data = ckpt.read(entry.hf_name)
        changed = arch.transform(entry.hf_name, entry.gguf_name, data)
        w = np.asarray(data if changed is None else changed, dtype=np.float32)
    else:                   # only those rows read (an 8B model's cost table read every byte: 48 s of a GPU run)
        w = ckpt.read_picked_rows(entry.hf_name, pick)
    return w.astype(np.float16).astype(np.float32)


def _gguf_name(arch, hf: str) -> str | None:
    return arch.gguf_name(hf) if hf != "lm_head.weight" or not arch.model.tied_embeddings else "token_embd.weight"


def by_gguf_name(arch, stats: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    out = {}
    for hf, v in stats.items():
        if (g := _gguf_name(arch, hf)) is not None:
            out[g] = v
    return out


class ByGgufName(Mapping):
    """``stats`` (checkpoint names) seen under GGUF names, read only when asked: a lazy source
    (calibrate.layers.LayerHessians) stays lazy."""

    def __init__(self, arch, stats):
        self.stats = stats
        self.names = {g: hf for hf in stats if (g := _gguf_name(arch, hf)) is not None}

    def __getitem__(self, name):
        return self.stats[self.names[name]]

    def group(self, name):
        group = getattr(self.stats, "group", None)
        return group(self.names[name]) if group and name in self.names else None

    def __iter__(self):
        return iter(self.names)

    def __len__(self):
        return len(self.names)


class Costs:
    """Every quantizable tensor's predicted KL divergence per candidate type (``tensor_costs``),
    computed when its Fisher diagonal is handed in (``add``), so a calibration that runs a layer at
    a time never holds the Fisher of the whole model.  The candidates include every type a
    recipe can pick for a row length, so one table serves every file type."""

    QUEUED_BYTES = SINK_QUEUE_BYTES     # Fisher rows waiting for the background thread (beyond one tensor)

    def __init__(self, model, ckpt, arch, imatrix: dict[str, np.ndarray], threads: int = 1,
                 background: bool = False, phases=None):
        from edgellm.exporters.gguf.write import FILE_TYPES, plan_tensors

        self.ckpt, self.arch, self.threads = ckpt, arch, threads
        # ``background`` (a calibration on a GPU): each tensor's costs are worked out by a thread
        # while the calibration goes on, so ggml's round trips on the CPU overlap the GPU's
        # backward pass instead of stopping it (48 s of an 8B shape's run on an H100); on a CPU
        # both want every core, so they take turns.  ``complete`` waits for them.
        self._pool, self._futures, self.phases = None, [], phases or Phases()
        if background:
            from concurrent.futures import ThreadPoolExecutor
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="edgellm-costs")
        self.imatrix = imatrix                  # checkpoint names; read when a tensor's costs are
        self.quantized = [e for e in plan_tensors(model, ckpt, arch, "Q4_K_M")
                          if len(e.shape) == 2 and e.hf_name is not None and e.ggml_type not in ("F32", "F16")]
        self.index: dict[str, list[int]] = {}
        for i, e in enumerate(self.quantized):
            self.index.setdefault(e.hf_name, []).append(i)
        self.types = {e.gguf_name: list(candidates(e.shape[1])) for e in self.quantized}
        for quant in FILE_TYPES:                # and whatever a recipe picks, should it not be one
            for e in plan_tensors(model, ckpt, arch, quant):
                if e.gguf_name in self.types and e.ggml_type not in self.types[e.gguf_name] + ["F32", "F16"]:
                    self.types[e.gguf_name].append(e.ggml_type)
        self.costs: dict[str, dict[str, float]] = {}

    def wanted_rows(self, hf_name: str) -> np.ndarray | None:
        """The rows of ``hf_name`` the estimate reads, when it reads only some (None: all), so a
        calibration may compute the Fisher of those rows alone."""
        at = self.index.get(hf_name, ())
        if len(at) != 1:
            return None
        e = self.quantized[at[0]]
        if self.arch.needs_transform(e.hf_name, e.gguf_name):
            return None
        return sampled_rows(e.shape[0], at[0])

    def add(self, hf_name: str, fisher: np.ndarray | None, rows: np.ndarray | None = None) -> None:
        """``fisher``: the tensor's Fisher diagonal, or with ``rows`` (``wanted_rows``) those rows'.
        In the background, only the rows the estimate reads are queued, and at most
        ``QUEUED_BYTES`` of them (or one tensor) wait: the thread is slower than a GPU's backward
        pass, and an unbounded queue of whole Fisher diagonals held 10 GB more than the preflight
        allowed on the 8B shape (13.7 GB measured against 4.4 predicted, RESULTS.md); the
        calibration waits for the thread instead."""
        if self._pool is None:
            self._add(hf_name, fisher, rows)
            return
        if fisher is not None and rows is None and (pick := self.wanted_rows(hf_name)) is not None:
            fisher, rows = np.ascontiguousarray(fisher[pick]), pick
        size = 0 if fisher is None else fisher.nbytes
        while self._futures and sum(n for _, n in self._futures) + size > self.QUEUED_BYTES:
            try:
                self._futures.pop(0)[0].result()
            except BaseException:
                self._pool.shutdown(wait=False, cancel_futures=True)     # the queued rest is not worked out
                self._pool, self._futures = None, []
                raise
        self._futures.append((self._pool.submit(self._timed_add, hf_name, fisher, rows), size))

    def _timed_add(self, hf_name: str, fisher, rows) -> None:
        with self.phases("cost table (beside the GPU)"):
            self._add(hf_name, fisher, rows)

    def _add(self, hf_name: str, fisher: np.ndarray | None, rows: np.ndarray | None) -> None:
        for i in self.index.get(hf_name, ()):
            e = self.quantized[i]
            pick = rows if rows is not None else (
                None if self.arch.needs_transform(e.hf_name, e.gguf_name) else sampled_rows(e.shape[0], i))
            f = None
            if fisher is not None:
                changed = self.arch.transform(e.hf_name, e.gguf_name, fisher)
                f = np.asarray(fisher if changed is None else changed, dtype=np.float32)
                if pick is not None and rows is None:
                    f = f[pick]
            self.costs[e.gguf_name] = tensor_costs(_matrix(self.ckpt, self.arch, e, pick), f,
                                                   self.imatrix.get(e.hf_name), self.types[e.gguf_name],
                                                   self.threads, seed=i, rows=e.shape[0])

    def wait(self) -> None:
        """The background work done (its first error raised); the thread is let go."""
        if self._pool is None:
            return
        futures, self._futures = self._futures, []
        try:
            for f, _ in futures:
                f.result()
        finally:
            if not self._futures:
                self._pool.shutdown(wait=True, cancel_futures=True)
                self._pool = None

    def complete(self, progress=lambda i, n: None) -> "Costs":
        """Costs for the tensors no Fisher came for (importance-weighted), once those being
        worked out in the background are done."""
        self.wait()
        todo = [e for e in self.quantized if e.gguf_name not in self.costs]
        for k, e in enumerate(todo):
            self._add(e.hf_name, None, None)
            progress(k + 1, len(todo))
        host_memory.release()       # once, not per tensor (1.4 s of a 0.5B calibration): blocks past
        return self                 # the mmap threshold go back to the system as they are freed


def mixed_types(model, ckpt, arch, quant: str, cal, threads: int = 1, budget: int | None = None,
                progress=lambda i, n: None) -> MixedTypes:
    """The per-tensor types for a calibrated ``quant`` file: llama.cpp's recipe bytes (or ``budget``)
    spent by measured sensitivity.  ``cal.costs`` (a ``Costs`` filled during calibration) is used
    when present; otherwise the costs are computed here from ``cal.fisher``."""
    from edgellm.exporters.gguf.write import plan_tensors

    entries = plan_tensors(model, ckpt, arch, quant)
    quantized = [e for e in entries if len(e.shape) == 2 and e.hf_name is not None
                 and e.ggml_type not in ("F32", "F16")]
    table = getattr(cal, "costs", None)
    if table is None:
        table = Costs(model, ckpt, arch, cal.imatrix, threads)
        for i, hf in enumerate(dict.fromkeys(e.hf_name for e in table.quantized)):
            table.add(hf, cal.fisher.get(hf))
            progress(i + 1, len(table.index))
    costs = table.complete().costs
    recipe_bytes = sum(e.nbytes for e in quantized)
    budget = recipe_bytes if budget is None else budget - sum(e.nbytes for e in entries if e not in quantized)
    sizes = {e.gguf_name: {t: e.shape[0] * TYPES[t].row_bytes(e.shape[1]) for t in costs[e.gguf_name]}
             for e in quantized}
    recipe_cost = sum(costs[e.gguf_name][e.ggml_type] for e in quantized)
    chosen = allocate({e.gguf_name: costs[e.gguf_name] for e in quantized}, sizes, budget)
    spent = sum(sizes[n][t] for n, t in chosen.items())
    return MixedTypes(chosen, budget, spent, sum(costs[n][t] for n, t in chosen.items()), recipe_cost)


@dataclass(frozen=True)
class CalibratedGguf:
    """Everything ``write_gguf`` needs for a calibrated file."""
    mix: MixedTypes
    imatrix: dict                     # GGUF name -> importance per column
    compensators: object              # ggml_gptq.Compensators


def calibrated_gguf(model, ckpt, arch, quant: str, cal, threads: int = 1,
                    progress=lambda i, n: None) -> CalibratedGguf:
    from edgellm.exporters.gguf.gptq import Compensators

    with cal.phases("types chosen"):
        mix = mixed_types(model, ckpt, arch, quant, cal, threads, progress=progress)
    return CalibratedGguf(mix, by_gguf_name(arch, cal.imatrix), Compensators(ByGgufName(arch, cal.hessian),
                                                                             device=cal.device, phases=cal.phases))
