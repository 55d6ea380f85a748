"""The distillation stage: teacher folder + student size in, a standard Hugging Face folder out.

checks (architecture, tokenizer, data, size, device) -> importance on calibration windows ->
pruned student -> distillation (checkpointed; resumable) -> held-out perplexity of both and KL
divergence from the teacher -> the folder, with the teacher's tokenizer and a card, renamed into
place only when complete.  Every check runs before any training.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

from edgellm.errors import BadInput, EdgeLLMError
from edgellm.exporters.distill.train import WARMUP_STEPS, DistillConfig, Progress
from edgellm.textdata import text_ids

TEACHER = ("the teacher", "")          # what a teacher transformers cannot load is called (load_reference)


@dataclass(frozen=True)
class StudentRequest:
    teacher: Path
    out: Path
    config: DistillConfig
    size: float | None = None
    params: int | None = None
    layers: int | None = None
    hidden: int | None = None
    data: str | None = None               # text; None: the default training text
    data_name: str = "default: Python standard library source (edgellm.textdata training split)"
    resume: bool = False
    force: bool = False
    trust_remote_code: bool = False

    def to_dict(self) -> dict:
        """As JSON (what ``distill --gpus/--processes`` hands each rank: the parsed request, once)."""
        from dataclasses import asdict

        return {**asdict(self), "teacher": str(self.teacher), "out": str(self.out)}

    @classmethod
    def from_dict(cls, data: dict) -> "StudentRequest":
        from dataclasses import fields

        if not isinstance(data, dict) or set(data) != {f.name for f in fields(cls)} \
                or not isinstance(data["config"], dict):
            raise BadInput("not a distillation request edgellm wrote")
        try:
            cfg = DistillConfig(**data["config"])
        except TypeError as e:
            raise BadInput(f"not a distillation request edgellm wrote ({e})") from None
        return cls(**{**data, "teacher": Path(data["teacher"]), "out": Path(data["out"]), "config": cfg})


@dataclass(frozen=True)
class StudentResult:
    folder: Path
    record: dict


def is_student(path: Path) -> bool:
    """A folder ``distill`` wrote (so ``--force`` may replace it)."""
    return (path / "edgellm-distill.json").is_file() and (path / "config.json").is_file()


def work_dir(out: Path) -> Path:
    return out.with_name(f".{out.name}.distill-work")


def _tokens(tok, text: str, cfg: DistillConfig):
    import numpy as np

    ids = np.asarray(text_ids(tok, text), dtype=np.int64)
    if len(ids) < cfg.seq + 2 or len(ids) < cfg.batch * cfg.seq // 4:
        raise BadInput(f"the training text is {len(ids)} tokens: too short for one batch of {cfg.batch} x "
                       f"{cfg.seq} (give more text with --data, or a smaller --batch/--seq)")
    return ids


def distill_student(req: StudentRequest, say: Callable[[str], None] = lambda s: None,
                    progress: Callable[[Progress], None] = lambda p: None,
                    stop_after: int | None = None) -> StudentResult:
    """Distil ``req.teacher`` into a student folder at ``req.out`` (claimed for the run: locked,
    replaced with --force only when it is a student edgellm wrote)."""
    from edgellm.exporters.compute import resolve
    from edgellm.exporters.distill.ranks import join, leave
    from edgellm.core.output import claimed

    ranks = join(resolve(req.config.device), req.config.batch)     # under torchrun: this process's place
    try:
        if not ranks.main:                                          # rank 0 owns the output and speaks
            return _distill(req, lambda s: None, lambda p: None, stop_after, ranks)
        with claimed(req.out, req.force, is_student, "distilled student"):
            return _distill(req, say, progress, stop_after, ranks)
    finally:
        leave(ranks)


def _distill(req: StudentRequest, say, progress, stop_after, ranks) -> StudentResult:
    import torch
    from transformers import AutoConfig

    from edgellm import models
    from edgellm.exporters.verify.evaluate import HFScorer, evaluate
    from edgellm.exporters.distill import prune
    from edgellm.exporters.distill.train import train, write_card
    from edgellm.exporters.io.reference import load_reference
    from edgellm.models.families import family_for, from_config_dict
    from edgellm.textdata import held_out_text, training_text

    from edgellm.exporters.distill.ranks import barrier

    cfg = replace(req.config, device=ranks.device)
    from edgellm.exporters.distill.teacher import check

    check(cfg.teacher_precision, ranks)
    t_cfg = models.load_config(str(req.teacher))
    family_for(t_cfg, "distill")
    if ranks.main:
        from edgellm.exporters.distill.checkpoint import refuse_foreign

        refuse_foreign(work_dir(req.out))
    if not any((req.teacher / f).is_file() for f in ("tokenizer.json", "tokenizer.model")):
        raise BadInput(f"{req.teacher}: no tokenizer (tokenizer.json or tokenizer.model); the student "
                       "shares its teacher's, so the teacher must have one")
    shape = prune.student_shape(dict(t_cfg.raw), t_cfg.model_type, str(req.teacher), req.size, req.params,
                                req.layers, req.hidden)
    tok, teacher = load_reference(req.teacher, req.trust_remote_code, t_cfg, TEACHER)
    if len(tok) > teacher.config.vocab_size:
        raise BadInput(f"{req.teacher}: the tokenizer has {len(tok)} tokens but the model {teacher.config.vocab_size}: "
                       "mismatched tokenizer")
    torch.manual_seed(cfg.seed)
    # the default text: enough for the run (about 4 characters a token, so each window is drawn
    # from at least twice the tokens it needs), not all 31 MB of it
    default = None if req.data is not None else training_text(max(1 << 20, 8 * cfg.tokens))
    ids = _tokens(tok, req.data if req.data is not None else default, cfg)
    work = work_dir(req.out)
    if ranks.main:
        from edgellm.exporters.distill.checkpoint import prepare

        prepare(work, req.resume)
    barrier(ranks)

    student_cfg = AutoConfig.for_model(**shape)
    if cfg.baseline:
        from transformers import AutoModelForCausalLM
        student, keep_h = AutoModelForCausalLM.from_config(student_cfg, dtype=torch.float32), None
    else:
        say("measuring layer, head, channel and embedding importance on the teacher")
        wins = [ids[i:i + cfg.seq].tolist() for i in range(0, min(len(ids) - cfg.seq, 8 * cfg.seq), cfg.seq)]
        imp = prune.measure(teacher, wins)
        student, keep_h, _ = prune.prune(teacher, student_cfg, imp)
    s_model = from_config_dict(shape, str(req.out))
    say(f"student: {s_model.n_layers} layers, hidden {s_model.hidden}, {s_model.n_params:,} parameters "
        f"(teacher {t_cfg.n_params:,})")
    from edgellm.exporters.compute import gpu_memory_guard, peak_gpu_bytes

    say(f"training on {cfg.device}" + (f" and {ranks.world - 1} more processes (FSDP2)" if ranks.distributed else ""))
    seen: list[Progress] = []

    def progressed(p: Progress) -> None:
        seen[:] = [p]
        progress(p)

    setup: dict = {}
    with gpu_memory_guard(cfg.device, "distilling", "; the last checkpoint stays usable with --resume"):
        losses = train(student, None if cfg.baseline else teacher, ids, cfg, work, keep_h, req.resume,
                       stop_after, progressed, ranks, setup)
    last = seen[0] if seen else None
    rate = (last.steady_tokens_per_s or last.tokens_per_s) if last else None
    throughput = {"device": cfg.device, "processes": ranks.world, "tokens_per_s": rate,
                  "tokens_per_s_per_device": rate / ranks.world if rate else None,
                  "tokens_per_s_with_warmup": last.tokens_per_s if last else None,
                  "steady_after_steps": WARMUP_STEPS if last and last.steady_tokens_per_s else 0,
                  "peak_gpu_bytes": peak_gpu_bytes(cfg.device),
                  "peak_gpu_reserved_bytes": peak_gpu_bytes(cfg.device, reserved=True), **setup}
    if stop_after is not None and len(losses) < cfg.steps:
        raise EdgeLLMError(f"stopped after step {len(losses)} of {cfg.steps}; --resume continues")
    if ranks.distributed:                       # the whole student on rank 0; the others are done
        student = _gathered(student, student_cfg, ranks)
        if not ranks.main:
            return StudentResult(req.out, {})
        tok, teacher = load_reference(req.teacher, req.trust_remote_code, t_cfg, TEACHER)
    elif setup.get("teacher_precision") == "fp8":        # measured against the teacher itself, not its FP8 copy
        del teacher
        tok, teacher = load_reference(req.teacher, req.trust_remote_code, t_cfg, TEACHER)
    from edgellm.exporters.distill.teacher import uncompile_layers

    for m in (student, teacher):                # the held-out windows have other shapes: eager, no recompiling
        uncompile_layers(m)
    # measured where it trained: an 8B teacher's held-out pass takes minutes on a CPU, a second on a GPU
    student.to(cfg.device)
    # (bfloat16 on a GPU: an 8B teacher in float32 would need 32 GB where training needed 16 or 8)
    teacher.to(cfg.device, dtype=torch.bfloat16 if cfg.device.startswith("cuda") else torch.float32)
    say("measuring the student against the teacher on held-out text")
    ctx = min(cfg.seq, 512)
    r = evaluate(HFScorer(tok, student, "student"), held_out_text(), ctx, 8, HFScorer(tok, teacher, "teacher"))
    student.to("cpu")
    del teacher
    embed = lambda m: m.vocab * m.hidden * (1 if m.tied_embeddings else 2)     # noqa: E731
    record = {
        "teacher": str(req.teacher), "data": req.data_name, "steps": cfg.steps, "tokens": cfg.tokens,
        "method": "random init, next-token loss" if cfg.baseline else
        "pruned from the teacher by importance, then logit distillation" + (" + hidden-state loss" if cfg.hidden_loss else ""),
        "config": {k: v for k, v in cfg.__dict__.items()}, "throughput": throughput,
        "student": {"layers": s_model.n_layers, "hidden": s_model.hidden, "parameters": s_model.n_params,
                    "share_of_teacher_non_embedding": (s_model.n_params - embed(s_model)) / (t_cfg.n_params - embed(t_cfg))},
        "metrics": {"student_perplexity": r.perplexity, "teacher_perplexity": r.reference_perplexity,
                    "kld_vs_teacher": r.mean_kld, "top1_agreement": r.top1_agreement, "context": ctx,
                    "first_loss": losses[0], "final_loss": sum(losses[-10:]) / len(losses[-10:])},
    }
    from edgellm.core.output import temp_name

    tmp = temp_name(req.out, "partial")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        student.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        for f in ("tokenizer.model", "generation_config.json"):
            if (req.teacher / f).is_file() and not (tmp / f).exists():
                shutil.copyfile(req.teacher / f, tmp / f)
        write_card(tmp, record)
        from edgellm.exporters.package import swap_in
        swap_in(tmp, req.out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    from edgellm.exporters.distill.checkpoint import discard

    discard(work)
    return StudentResult(req.out, record)


def _gathered(student, student_cfg, ranks):
    """The FSDP-sharded ``student`` as one plain model on rank 0 (None elsewhere)."""
    import torch
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    from transformers import AutoModelForCausalLM

    full = get_model_state_dict(student, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if not ranks.main:
        return None
    plain = AutoModelForCausalLM.from_config(student_cfg, dtype=torch.float32)
    plain.load_state_dict(full)
    return plain.eval()
