"""A student derived from its teacher: depth and width pruning by measured importance (Minitron).

The teacher runs in float32 on a few windows of text, and every prunable part is scored by what it
does on that text (Muralidharan et al., "Compact Language Models via Pruning and Knowledge
Distillation", 2024, and ShortGPT's block influence for depth):

- a layer by how much it changes the residual stream: 1 − cos(hidden in, hidden out), mean over
  tokens; the least influential layers are dropped, the rest keep their order;
- an MLP channel by the mean |activation| entering ``down_proj``;
- a key/value group (one KV head and the query heads that read it) by the mean L2 norm of its
  heads' attention outputs entering ``o_proj``;
- an embedding channel by the mean |x| after every RMSNorm, summed over layers.

The student is the teacher's own weights at the kept indices (rows and columns), in a config of
the same family; RMSNorm then normalizes over fewer channels, which distillation repairs.
Families: llama, mistral, qwen2, qwen3 (the same module layout); others fail before any work.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgellm.errors import BadInput

@dataclass(frozen=True)
class Importance:
    layers: np.ndarray               # [n_layers]
    mlp: np.ndarray                  # [n_layers, intermediate]
    groups: np.ndarray               # [n_layers, n_kv_heads]
    hidden: np.ndarray               # [hidden]


def measure(model, windows: list[list[int]]) -> Importance:
    """Importance scores of ``model`` (a transformers llama-family model) on ``windows``."""
    import torch

    cfg = model.config
    n, kv = cfg.num_hidden_layers, cfg.num_key_value_heads
    heads = cfg.num_attention_heads
    hd = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    layer_score = torch.zeros(n, dtype=torch.float64)
    mlp = torch.zeros(n, cfg.intermediate_size, dtype=torch.float64)
    groups = torch.zeros(n, kv, dtype=torch.float64)
    hidden = torch.zeros(cfg.hidden_size, dtype=torch.float64)
    tokens = 0
    hooks = []
    for i, layer in enumerate(model.model.layers):
        def down_in(_m, args, i=i):
            mlp[i] += args[0].detach().abs().reshape(-1, args[0].shape[-1]).sum(0).double().cpu()

        def o_in(_m, args, i=i):
            x = args[0].detach().reshape(-1, heads, hd)
            groups[i] += x.norm(dim=-1).reshape(-1, kv, heads // kv).sum(-1).sum(0).double().cpu()

        def normed(_m, _args, out):
            hidden.add_(out.detach().abs().reshape(-1, out.shape[-1]).sum(0).double().cpu())

        def block(_m, args, out, i=i):
            x, y = args[0].detach(), (out[0] if isinstance(out, tuple) else out).detach()
            cos = torch.nn.functional.cosine_similarity(x.reshape(-1, x.shape[-1]), y.reshape(-1, y.shape[-1]), dim=-1)
            layer_score[i] += (1 - cos).sum().double().cpu()

        hooks += [layer.mlp.down_proj.register_forward_pre_hook(down_in),
                  layer.self_attn.o_proj.register_forward_pre_hook(o_in),
                  layer.input_layernorm.register_forward_hook(normed),
                  layer.post_attention_layernorm.register_forward_hook(normed),
                  layer.register_forward_hook(block)]
    try:
        device = next(model.parameters()).device
        with torch.no_grad():
            for w in windows:
                model(torch.tensor([w], device=device))
                tokens += len(w)
    finally:
        for h in hooks:
            h.remove()
    f = lambda t: (t / tokens).numpy()        # noqa: E731
    return Importance(f(layer_score), f(mlp), f(groups), f(hidden))


def _top(scores: np.ndarray, k: int) -> np.ndarray:
    return np.sort(np.argsort(-scores, kind="stable")[:k])


def prune(teacher, student_cfg, imp: Importance):
    """The student model (transformers, float32) holding the teacher's weights at the kept indices."""
    import torch
    from transformers import AutoModelForCausalLM

    t = teacher.config
    heads, kv = t.num_attention_heads, t.num_key_value_heads
    hd = getattr(t, "head_dim", None) or t.hidden_size // heads
    rep = heads // kv
    s_kv = student_cfg.num_key_value_heads
    if student_cfg.num_attention_heads // s_kv != rep or (getattr(student_cfg, "head_dim", None) or hd) != hd:
        raise BadInput("the student must keep the teacher's head size and query heads per key/value head")
    keep_layers = _top(imp.layers, student_cfg.num_hidden_layers)
    keep_h = torch.from_numpy(_top(imp.hidden, student_cfg.hidden_size))
    student = AutoModelForCausalLM.from_config(student_cfg, dtype=torch.float32)
    T, S = teacher.model, student.model

    def rows_cols(w, rows=None, cols=None):
        w = w.detach()
        if rows is not None:
            w = w.index_select(0, rows)
        if cols is not None:
            w = w.index_select(1, cols)
        return w.clone()

    with torch.no_grad():
        S.embed_tokens.weight.copy_(rows_cols(T.embed_tokens.weight, cols=keep_h))
        S.norm.weight.copy_(T.norm.weight[keep_h])
        if not student_cfg.tie_word_embeddings:
            student.lm_head.weight.copy_(rows_cols(teacher.lm_head.weight, cols=keep_h))
        for j, i in enumerate(keep_layers):
            tl, sl = T.layers[int(i)], S.layers[j]
            g = torch.from_numpy(_top(imp.groups[i], s_kv))
            q_rows = torch.cat([torch.arange(h * hd, (h + 1) * hd) for gg in g for h in range(gg * rep, (gg + 1) * rep)])
            kv_rows = torch.cat([torch.arange(gg * hd, (gg + 1) * hd) for gg in g])
            ffn = torch.from_numpy(_top(imp.mlp[i], student_cfg.intermediate_size))
            a, sa = tl.self_attn, sl.self_attn
            if hasattr(a, "qkv_proj"):                # Phi-3: q, k and v rows stacked in one matrix
                q_size, kv_size = heads * hd, kv * hd
                rows = torch.cat([q_rows, q_size + kv_rows, q_size + kv_size + kv_rows])
                sa.qkv_proj.weight.copy_(rows_cols(a.qkv_proj.weight, rows, keep_h))
            for name, rows in (("q_proj", q_rows), ("k_proj", kv_rows), ("v_proj", kv_rows)):
                if not hasattr(a, name):
                    continue
                getattr(sa, name).weight.copy_(rows_cols(getattr(a, name).weight, rows, keep_h))
                if getattr(a, name).bias is not None:
                    getattr(sa, name).bias.copy_(getattr(a, name).bias[rows])
            sa.o_proj.weight.copy_(rows_cols(a.o_proj.weight, keep_h, q_rows))
            for nm in ("q_norm", "k_norm"):
                if hasattr(a, nm):
                    getattr(sa, nm).weight.copy_(getattr(a, nm).weight)
            if hasattr(tl.mlp, "gate_up_proj"):       # Phi-3: gate and up rows stacked in one matrix
                rows = torch.cat([ffn, t.intermediate_size + ffn])
                sl.mlp.gate_up_proj.weight.copy_(rows_cols(tl.mlp.gate_up_proj.weight, rows, keep_h))
            else:
                sl.mlp.gate_proj.weight.copy_(rows_cols(tl.mlp.gate_proj.weight, ffn, keep_h))
                sl.mlp.up_proj.weight.copy_(rows_cols(tl.mlp.up_proj.weight, ffn, keep_h))
            sl.mlp.down_proj.weight.copy_(rows_cols(tl.mlp.down_proj.weight, keep_h, ffn))
            sl.input_layernorm.weight.copy_(tl.input_layernorm.weight[keep_h])
            sl.post_attention_layernorm.weight.copy_(tl.post_attention_layernorm.weight[keep_h])
    student.tie_weights()
    return student, keep_h, keep_layers


def student_shape(teacher_cfg: dict, model_type: str, name: str, size: float | None = None,
                  params: int | None = None, layers: int | None = None, hidden: int | None = None) -> dict:
    """config.json of the student: ``size`` (share of the teacher's non-embedding parameters),
    ``params`` (total parameters), or an explicit ``layers``/``hidden``; checked against the teacher."""
    from edgellm.models.families import REGISTRY, from_config_dict

    arch = REGISTRY[model_type](teacher_cfg, name)
    teacher = from_config_dict(teacher_cfg, name)
    embed = teacher.vocab * teacher.hidden * (1 if teacher.tied_embeddings else 2)
    if layers is not None or hidden is not None:
        width = (hidden or teacher.hidden) / teacher.hidden
        cfg = arch.shrunk(layers or teacher.n_layers, width)
        if hidden is not None:
            cfg["hidden_size"] = hidden
    else:
        if size is not None:
            if not 0 < size < 1:
                raise BadInput(f"--size {size:g}: give a share of the teacher between 0 and 1 (e.g. 0.25)")
            target = size * (teacher.n_params - embed)
            measure_of = lambda m: m.n_params - m.vocab * m.hidden * (1 if m.tied_embeddings else 2)  # noqa: E731
        else:
            target, measure_of = params, (lambda m: m.n_params)
        found = []                       # (params, layers share, width, cfg): the deepest fit per width
        for width in (1.0, 0.875, 0.75, 0.625, 0.5, 0.375, 0.25, 0.125):
            for n in range(teacher.n_layers, 0, -1):
                cfg = arch.shrunk(n, width)
                got = measure_of(from_config_dict(cfg, name))
                if got <= target * 1.05:
                    found.append((got, n / teacher.n_layers, width, cfg))
                    break
        if not found:
            raise BadInput(f"no student of {name} is that small: even one layer at the narrowest width is "
                           "larger; ask for more (a bigger --size or --params)")
        # within 10% of the target, the most balanced shape (Minitron: width pruning keeps more
        # than depth pruning at equal size, but not to one layer); else the nearest in size
        near = [f for f in found if abs(f[0] - target) <= 0.2 * target]
        best = max(near, key=lambda f: (min(f[1], f[2]), -abs(f[0] - target))) if near else \
            min(found, key=lambda f: abs(f[0] - target))
        cfg = dict(best[3])
        # then the MLP width, in steps of 64 channels, brings the size to the target
        per_channel = 3 * cfg["hidden_size"] * cfg["num_hidden_layers"]
        ffn = cfg["intermediate_size"] + round((target - best[0]) / per_channel / 64) * 64
        cfg["intermediate_size"] = int(min(max(64, ffn), teacher.ffn))
        best = (None, cfg)
        cfg = best[1]
    problem = arch.student_problem(cfg)
    if problem:
        raise BadInput(problem)
    student = from_config_dict(cfg, name)
    if student.n_layers < 1 or student.hidden < 1:
        raise BadInput("the student must keep at least one layer")
    if student.n_layers > teacher.n_layers or student.hidden > teacher.hidden:
        raise BadInput(f"the student cannot be deeper or wider than the teacher ({teacher.n_layers} layers, "
                       f"hidden {teacher.hidden})")
    if student.n_params >= teacher.n_params:
        raise BadInput(f"the student ({student.n_params:,} parameters) is not smaller than the teacher "
                       f"({teacher.n_params:,})")
    return cfg


def save_student(student, folder: Path) -> None:
    student.save_pretrained(folder, safe_serialization=True)
