"""A plan as the user reads it (a table with the winner marked) or as a script reads it (JSON)."""

from __future__ import annotations

from edgellm.plan.planner import LOSSLESS_KLD, Candidate, Plan
from edgellm.textfmt import table
from edgellm.units import fmt_bytes, fmt_count, fmt_rate


def _candidate_json(c: Candidate) -> dict:
    e = c.estimate
    return {
        "choice": c.choice.to_dict(), "label": c.choice.label, "runs_on": e.unit,
        "file_bytes": e.file_bytes, "tensor_types": e.tensor_types,
        "memory": {"total_bytes": e.memory.total, "weights_bytes": e.memory.weights,
                   "kv_cache_bytes": e.memory.kv_cache, "compute_bytes": e.memory.compute,
                   "runtime_bytes": e.memory.runtime},
        "prefill_tokens_per_s": round(e.prefill_tps, 2), "decode_tokens_per_s": round(e.decode_tps, 2),
        "speed": {"basis": e.speed_basis, "estimated_types": list(e.estimated_types), "source": e.speed_source},
        "quality": {"mean_kld": c.quality.kld, "ppl_ratio": c.quality.ppl_ratio,
                    "top1_agreement": c.quality.top1, "spread": c.quality.spread, "source": c.quality.source},
        "fits": c.fits, "failures": list(c.failures), "verdict": c.verdict,
    }


def prediction(c: Candidate, context: int) -> dict:
    """What the plan predicted for the chosen build, as the bundle's manifest records it and
    `edgellm profile` shows it beside the measurement."""
    e = c.estimate
    return {"file_bytes": e.file_bytes, "peak_memory_bytes": e.memory.total,
            "prefill_tokens_per_s": round(e.prefill_tps, 2), "decode_tokens_per_s": round(e.decode_tps, 2),
            "runs_on": e.unit, "context": context, "kv_cache": c.choice.kv_cache,
            "mean_kld": round(c.quality.kld, 5), "kld_spread": round(c.quality.spread, 2)}


def to_json(p: Plan) -> dict:
    m, d, b = p.model, p.device, p.budgets
    return {
        "model": {"name": m.name, "source": m.source, "architecture": m.model_type,
                  "parameters": m.n_params, "layers": m.n_layers, "hidden": m.hidden,
                  "vocab": m.vocab, "tied_embeddings": m.tied_embeddings},
        "device": {"name": d.name, "profile": d.source, "ram_bytes": d.memory.ram,
                   "effective_bandwidth_bytes_per_s": d.memory.effective_bandwidth,
                   "effective_fp32_flops": d.cpu.effective_fp32},
        "budgets": {"max_memory_bytes": b.max_memory, "min_decode_tokens_per_s": b.min_decode_tps,
                    "context": b.context, "max_kld": b.max_kld},
        "winner": _candidate_json(p.winner) if p.winner else None,
        "candidates": [_candidate_json(c) for c in p.candidates],
        "suggestions": list(p.suggestions),
    }


def to_text(p: Plan) -> str:
    m, d, b = p.model, p.device, p.budgets
    head = [
        f"model   {m.name}: {m.model_type}, {fmt_count(m.n_params)} params, {m.n_layers} layers, "
        f"hidden {m.hidden}, vocab {m.vocab}  [{m.source}]",
        f"device  {d.name}: {fmt_bytes(d.memory.ram)} RAM, "
        f"{fmt_rate(d.memory.effective_bandwidth, 'B/s')} effective bandwidth, "
        f"{fmt_rate(d.cpu.effective_fp32, 'FLOPS')} fp32 CPU",
        f"budget  memory <= {fmt_bytes(b.max_memory)}, decode >= {b.min_decode_tps:g} tok/s, "
        f"context {b.context}, quality loss <= {b.max_kld:g} KLD",
        "",
    ]
    rows = []
    for c in p.candidates:
        e = c.estimate
        mark = "*" if p.winner is not None and c.choice == p.winner.choice else " "
        est = "~" if c.quality.approximate else " "
        fast = "" if e.speed_measured else "~"
        rows.append([mark, c.choice.label, c.choice.kv_cache, fmt_bytes(e.file_bytes),
                     fmt_bytes(e.memory.total), f"{fast}{e.prefill_tps:.0f}", f"{fast}{e.decode_tps:.1f}",
                     f"{est}{c.quality.kld:.4f}", e.unit, c.verdict])
    body = table(["", "build", "kv", "file", "peak RAM", "prefill/s", "decode/s", "KLD", "runs on",
                  "verdict"], rows, right={3, 4, 5, 6, 7})
    foot = ["", "speeds in tokens/s for a 512-token prompt then 128 new tokens; peak RAM at the full context.",
            *_speed_basis(p),
            "KLD: expected mean KL divergence vs the unquantized model; ~ marks a prediction typically within "
            f"{max((c.quality.spread for c in p.candidates), default=1):.2g}x either way. Below {LOSSLESS_KLD:g} a build "
            "counts as lossless and the fastest such build wins. Quality figures come from:"]
    foot += [f"  {src}" for src in dict.fromkeys(c.quality.source for c in p.candidates)]
    if p.winner:
        w = p.winner
        foot.insert(0, f"\nchosen: {w.choice.label} with {w.choice.kv_cache} KV cache on {w.estimate.unit}: "
                       f"{fmt_bytes(w.estimate.file_bytes)} file, {fmt_bytes(w.estimate.memory.total)} peak, "
                       f"{w.estimate.decode_tps:.1f} tok/s decode ({w.verdict.removeprefix('chosen: ')}).")
    else:
        foot.insert(0, "\nnothing fits these budgets." + ("" if p.suggestions else " No shorter context, smaller student or known device fits either."))
        foot[1:1] = [f"  would fit: {s}" for s in p.suggestions]
    return "\n".join(head) + body + "\n" + "\n".join(foot)


def _speed_basis(p: Plan) -> list[str]:
    """Which speeds rest on the profile's kernel rates ([kernels]: measured on the device by
    `edgellm device measure`, or from published figures) and which are estimates."""
    es = [c.estimate for c in p.candidates]
    rated = [e for e in es if e.speed_measured]
    lines = []
    if rated:
        sources = list(dict.fromkeys(e.speed_source for e in rated if e.speed_source))
        lines.append(f"speeds of {len(rated)} of {len(es)} builds from the profile's kernel rates"
                     + (f" ({'; '.join(sources[:3])})" if sources else "") + ".")
    partly = sorted({t for e in es for t in e.estimated_types})
    if any(e.speed_basis == "estimate" for e in es):
        lines.append("~ speeds are estimates from bandwidth and the fp32 rate, with kernel efficiencies taken on "
                     "another machine: `edgellm device measure` on the device measures its kernels.")
    if partly:
        lines.append(f"~ also marks builds with weight types the profile has no rate for ({', '.join(partly)}): "
                     "those tensors are read at the bandwidth.")
    return lines


def prediction_for(model_folder, choice, device_name: str) -> dict:
    """What the planner predicts for ``choice`` (a bundle's recorded build) of the model whose
    config.json is in ``model_folder``, on ``device_name``, at the device's default budgets."""
    from edgellm import devices, models
    from edgellm.plan import planner

    model = models.load_config(str(model_folder))
    device = devices.find(device_name)
    budgets = planner.budgets_for(device, None, None, None, model)
    c = planner.evaluate_choice(model, device, budgets, choice)
    return prediction(c, budgets.context) if c else {}
