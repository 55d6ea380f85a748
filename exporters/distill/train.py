"""Knowledge distillation: a pruned student learns its teacher's next-token distributions.

One readable loop: batches of ``seq`` tokens drawn by a seeded generator from the training text;
loss = KL(teacher ‖ student) at temperature T (× T²), plus, when asked, the mean squared error
between the two final hidden states on the channels the student kept (its channels are a subset
of the teacher's, so no projection is needed).  AdamW with warm-up and cosine decay; gradient
clipping.  Every ``checkpoint_every`` steps the student, optimizer, schedule and the data
generator's state go to the work folder (``checkpoint``); ``resume`` continues from there and
reproduces the uninterrupted run (same seed, same batches; bit for bit on a CPU in one process),
on the same number of processes or another (``ranks``).

``baseline=True`` trains the same student shape from random initialisation with plain next-token
loss instead (no teacher): the comparison the benchmark makes.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from edgellm.exporters.distill.ranks import Ranks



@dataclass(frozen=True)
class DistillConfig:
    steps: int = 500
    batch: int = 8
    seq: int = 256
    lr: float = 1e-3
    warmup: float = 0.05
    temperature: float = 1.0
    hidden_loss: float = 0.0
    checkpoint_every: int = 100
    seed: int = 0
    device: str = "cpu"              # a torch device (compute.resolve): a resumed run may move
    baseline: bool = False          # random init + next-token loss (the benchmark's comparison)

    @property
    def tokens(self) -> int:
        return self.steps * self.batch * self.seq


@dataclass(frozen=True)
class Progress:
    step: int
    steps: int
    loss: float
    tokens_per_s: float             # in all (every rank's share of the batch)
    eta_s: float
    devices: int = 1


def _lr(cfg: DistillConfig, step: int) -> float:
    warm = max(1, int(cfg.warmup * cfg.steps))
    if step < warm:
        return cfg.lr * (step + 1) / warm
    t = (step - warm) / max(1, cfg.steps - warm)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t)))


def train(student, teacher, ids, cfg: DistillConfig, work: Path, keep_h=None, resume: bool = False,
          stop_after: int | None = None, progress: Callable[[Progress], None] = lambda p: None,
          ranks: Ranks | None = None) -> list[float]:
    """Train ``student`` in place (sharded over ``ranks`` when there are several: see ``ranks``);
    returns the loss of every step run (averaged over the ranks).  ``stop_after`` ends the run
    early after that step (as an interruption would), leaving the last checkpoint behind."""
    import torch
    import torch.nn.functional as F

    from edgellm.exporters.distill import checkpoint
    from edgellm.exporters.distill.ranks import mean, shard

    ranks = ranks or Ranks(device=cfg.device)
    dev = ranks.device
    data = torch.as_tensor(ids.astype("int64"))
    shard(student.to(dev), ranks).train()
    if teacher is not None:
        shard(teacher.to(dev), ranks).eval()
    opt = torch.optim.AdamW(student.parameters(), lr=cfg.lr, weight_decay=0.01, betas=(0.9, 0.95))
    gen = torch.Generator().manual_seed(cfg.seed)
    start, losses = 0, []
    if resume and (got := checkpoint.load(work, student, opt, _settings(asdict(cfg)), ranks)) is not None:
        meta, state = got
        gen.set_state(state)
        start, losses = meta["step"], list(meta["losses"])
    keep = None if keep_h is None else keep_h.to(dev)
    mine = ranks.share(cfg.batch)
    t0, done_tokens = time.perf_counter(), 0
    for step in range(start, cfg.steps):
        for g in opt.param_groups:
            g["lr"] = _lr(cfg, step)
        starts = torch.randint(0, len(data) - cfg.seq - 1, (cfg.batch,), generator=gen)   # the whole batch
        x = torch.stack([data[s:s + cfg.seq] for s in starts[mine]]).to(dev)               # this rank's share
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=dev.startswith("cuda")):
            if cfg.baseline:
                loss = student(input_ids=x, labels=x).loss
            else:
                out = student(input_ids=x, output_hidden_states=cfg.hidden_loss > 0)
                with torch.no_grad():
                    ref = teacher(input_ids=x, output_hidden_states=cfg.hidden_loss > 0)
                T = cfg.temperature
                loss = F.kl_div(F.log_softmax(out.logits.float() / T, -1), F.log_softmax(ref.logits.float() / T, -1),
                                log_target=True, reduction="batchmean") * T * T / cfg.seq
                if cfg.hidden_loss > 0:
                    loss = loss + cfg.hidden_loss * F.mse_loss(out.hidden_states[-1].float(),
                                                               ref.hidden_states[-1].float().index_select(-1, keep))
        opt.zero_grad(set_to_none=True)
        loss.backward()                                    # (sharded: gradients averaged over the ranks)
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        opt.step()
        losses.append(mean(loss.item(), ranks))
        done_tokens += cfg.batch * cfg.seq
        rate = done_tokens / max(1e-9, time.perf_counter() - t0)
        progress(Progress(step + 1, cfg.steps, losses[-1], rate, (cfg.steps - step - 1) * cfg.batch * cfg.seq / rate,
                          ranks.world))
        last = step + 1 == cfg.steps or (stop_after is not None and step + 1 >= stop_after)
        if (step + 1) % cfg.checkpoint_every == 0 or last:
            checkpoint.save(work, student, opt, {"settings": _settings(asdict(cfg)), "step": step + 1,
                                                 "losses": losses}, gen.get_state(), ranks)
        if stop_after is not None and step + 1 >= stop_after:
            break
    student.eval()
    return losses


def _settings(config: dict) -> dict:
    """What a resumed run must share with its checkpoint: all but where it runs."""
    return {k: v for k, v in config.items() if k != "device"}


def write_card(folder: Path, record: dict) -> None:
    """``edgellm-distill.json`` and a short README.md: teacher, data, steps, final metrics."""
    (folder / "edgellm-distill.json").write_text(json.dumps(record, indent=1))
    m = record["metrics"]
    lines = [f"# Student of {record['teacher']}", "",
             f"Distilled by edgellm from `{record['teacher']}`: {record['student']['layers']} layers, hidden "
             f"{record['student']['hidden']}, {record['student']['parameters']:,} parameters "
             f"({record['student']['share_of_teacher_non_embedding']:.0%} of the teacher's non-embedding parameters).",
             "", f"- data: {record['data']}", f"- steps: {record['steps']} ({record['tokens']:,} tokens)",
             f"- held-out perplexity: student {m['student_perplexity']:.3f}, teacher {m['teacher_perplexity']:.3f}",
             f"- KL divergence from the teacher: {m['kld_vs_teacher']:.4f}", ""]
    (folder / "README.md").write_text("\n".join(lines))
