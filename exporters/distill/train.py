"""Knowledge distillation: a pruned student learns its teacher's next-token distributions.

One readable loop: batches of ``seq`` tokens drawn by a seeded generator from the training text;
loss = KL(teacher ‖ student) at temperature T (× T²), plus, when asked, the mean squared error
between the two final hidden states on the channels the student kept (its channels are a subset
of the teacher's, so no projection is needed).  AdamW with warm-up and cosine decay; gradient
clipping.  Every ``checkpoint_every`` steps (by default: the steps that take
``CHECKPOINT_S`` of steady training) the student, optimizer, schedule and the data generator's
state go to the work folder (``checkpoint``); ``resume`` continues from there and
reproduces the uninterrupted run (same seed, same batches; bit for bit on a CPU in one process),
on the same number of processes or another (``ranks``).

``baseline=True`` trains the same student shape from random initialisation with plain next-token
loss instead (no teacher): the comparison the benchmark makes.
"""

from __future__ import annotations

import contextlib
import gc
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
    checkpoint_every: int | None = None     # steps; None: every CHECKPOINT_S of steady training (see _every)
    seed: int = 0
    device: str = "cpu"              # a torch device (compute.resolve): a resumed run may move
    baseline: bool = False          # random init + next-token loss (the benchmark's comparison)
    teacher_precision: str = "auto"  # auto | fp32 | bf16 | fp8 (see teacher.prepare); a resumed run may change it
    compile: bool | None = None     # torch.compile the layers; None: on for one CUDA process

    @property
    def tokens(self) -> int:
        return self.steps * self.batch * self.seq


WARMUP_STEPS = 3     # steps left out of the steady rate: compilation and the allocator's first fills
TIMED_STEPS = 3      # steady steps timed for the default checkpoint interval (none is written before)
CHECKPOINT_S = 600   # the default checkpoint interval in seconds of training: a checkpoint holds the
                     # student and its optimizer (a 1.5 B student: 18 GB), so a fixed 100 steps wrote
                     # every 20 s on a GPU; ten minutes bounds what an interruption loses and what
                     # checkpointing costs (a copy of the state off the GPU, about a second)


def _every(seconds_per_step: float, ranks: Ranks) -> int:
    """Steps between default checkpoints, the same on every rank (the slowest rank's count)."""
    steps = max(1, int(CHECKPOINT_S / max(1e-6, seconds_per_step)))
    if not ranks.distributed:
        return steps
    import torch
    import torch.distributed as dist

    t = torch.tensor([steps], dtype=torch.int64, device=ranks.device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return int(t.item())


@dataclass(frozen=True)
class Progress:
    step: int
    steps: int
    loss: float
    tokens_per_s: float             # in all (every rank's share of the batch), since the run started
    eta_s: float
    devices: int = 1
    steady_tokens_per_s: float | None = None    # after the first WARMUP_STEPS steps of this run


def _lr(cfg: DistillConfig, step: int) -> float:
    warm = max(1, int(cfg.warmup * cfg.steps))
    if step < warm:
        return cfg.lr * (step + 1) / warm
    t = (step - warm) / max(1, cfg.steps - warm)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t)))


MAX_GRAD_NORM = 1.0


def _clipped_step(opt, max_norm: float) -> None:
    """The gradients clipped to a total norm of ``max_norm`` (as ``clip_grad_norm_``), then
    ``opt.step()``.  A fused AdamW divides the gradients by its ``grad_scale`` as it reads them
    (the hook torch's GradScaler uses), so there the clip costs one read of the gradients (the
    norm) instead of a read and a rewrite more: a float32 copy of the student each way, about 4 ms
    a step on a 1.5 B student.  Equal to clip-then-step up to the last bit of rounding (tested)."""
    import torch

    params = [p for g in opt.param_groups for p in g["params"] if p.grad is not None]
    if not opt.defaults.get("fused"):
        torch.nn.utils.clip_grad_norm_(params, max_norm)
        opt.step()
        return
    norm = torch.nn.utils.get_total_norm([p.grad for p in params], foreach=True)
    opt.grad_scale = torch.clamp((norm + 1e-6) / max_norm, min=1.0)    # clip_grad_norm_'s coefficient, inverted
    try:
        opt.step()
    finally:
        del opt.grad_scale


class _Losses:
    """Each step's loss read back without stalling the GPU: on CUDA the value is copied into
    pinned memory behind the step and read one step later, once an event says it is there, so
    the host queues step n+1 while step n runs.  On a CPU, or across ranks, it is read at once."""

    def __init__(self, lagged: bool):
        import torch
        self.lagged = lagged
        self.waiting: list = []
        self.slots = [torch.zeros(1, pin_memory=True) for _ in range(2)] if lagged else []

    def put(self, step: int, loss) -> None:
        import torch
        if not self.lagged:
            self.waiting.append((step, float(loss.item()), None))
            return
        slot = self.slots[step % 2]
        slot.copy_(loss.detach().reshape(1), non_blocking=True)
        ev = torch.cuda.Event()
        ev.record(torch.cuda.current_stream(loss.device))      # the loss's GPU, not the current device's
        self.waiting.append((step, slot, ev))

    def ready(self, flush: bool = False) -> list[tuple[int, float]]:
        """(step, loss) of the steps whose loss can be read now (all of them with ``flush``)."""
        keep = 0 if flush or not self.lagged else 1
        out = []
        while len(self.waiting) > keep:
            step, v, ev = self.waiting.pop(0)
            if ev is not None:
                ev.synchronize()
                v = float(v.item())
            out.append((step, v))
        return out


@contextlib.contextmanager
def _frozen_heap():
    """The objects alive when training starts (the models, their compiled code: millions on a
    real teacher) moved out of the garbage collector's reach for the loop, as ``gc.freeze``
    documents for long-lived objects: a full collection otherwise walks all of them, pausing the
    host that must keep the GPU's queue full.  Objects made during the loop are still collected;
    the frozen ones are handed back afterwards (unless someone else had frozen objects too)."""
    gc.collect()
    mine = gc.get_freeze_count() == 0
    gc.freeze()
    try:
        yield
    finally:
        if mine:
            gc.unfreeze()


def train(student, teacher, ids, cfg: DistillConfig, work: Path, keep_h=None, resume: bool = False,
          stop_after: int | None = None, progress: Callable[[Progress], None] = lambda p: None,
          ranks: Ranks | None = None, info: dict | None = None) -> list[float]:
    """Train ``student`` in place (sharded over ``ranks`` when there are several: see ``ranks``);
    returns the loss of every step run (averaged over the ranks).  ``stop_after`` ends the run
    early after that step (as an interruption would), leaving the last checkpoint behind.
    ``info`` receives how the run was set up (teacher precision and its measured divergence,
    compilation)."""
    import torch

    from edgellm.exporters.distill import checkpoint
    from edgellm.exporters.distill.loss import Distilled, run_teacher
    from edgellm.exporters.distill.ranks import mean, shard
    from edgellm.exporters.distill.teacher import compile_layers, prepare

    ranks = ranks or Ranks(device=cfg.device)
    dev = ranks.device
    cuda = dev.startswith("cuda")
    compiled = cfg.compile if cfg.compile is not None else (cuda and not ranks.distributed)
    info = {} if info is None else info
    info["compiled"] = bool(compiled)
    data = torch.as_tensor(ids.astype("int64"))
    net = Distilled(student.to(dev), cfg.temperature, compiled=compiled)
    shard(net, ranks).train()
    if teacher is not None:
        windows = [data[i * cfg.seq:(i + 1) * cfg.seq].reshape(1, -1) for i in range(min(4, len(data) // cfg.seq))]
        info.update(prepare(teacher, cfg.teacher_precision, ranks, windows))
        shard(teacher, ranks).eval()
        if compiled:
            compile_layers(teacher)
    if compiled:
        compile_layers(student)
    opt = torch.optim.AdamW(student.parameters(), lr=cfg.lr, weight_decay=0.01, betas=(0.9, 0.95),
                            fused=True if cuda and not ranks.distributed else None)
    gen = torch.Generator().manual_seed(cfg.seed)
    start, losses = 0, []
    if resume and (got := checkpoint.load(work, student, opt, _settings(asdict(cfg)), ranks)) is not None:
        meta, state = got
        gen.set_state(state)
        start, losses = meta["step"], list(meta["losses"])
    keep = None if keep_h is None else keep_h.to(dev)
    mine = ranks.share(cfg.batch)
    pending = _Losses(lagged=cuda and not ranks.distributed)
    t0, steady = time.perf_counter(), None
    every = cfg.checkpoint_every
    warm_step = start + min(WARMUP_STEPS, max(0, cfg.steps - start - 1))
    writer = checkpoint.Writer(work, ranks, background=cuda and not ranks.distributed)
    if writer.background:
        info["checkpoint_host_memory_s"] = round(writer.reserve(student), 2)

    def report(flush: bool = False) -> None:
        nonlocal steady, every
        for step, value in pending.ready(flush):
            losses.append(mean(value, ranks))
            now = time.perf_counter()
            done = (step + 1 - start) * cfg.batch * cfg.seq
            if step + 1 == warm_step:
                steady = (now, done)
            elif every is None and step + 1 == warm_step + TIMED_STEPS:
                # the default interval, from the time a steady step takes (the warm-up steps hold
                # the compilation: timed on them, a 10-minute interval came out as 30 seconds)
                every = _every((now - steady[0]) / TIMED_STEPS, ranks)
            rate = done / max(1e-9, now - t0)
            steady_rate = None if steady is None or step + 1 == warm_step else \
                (done - steady[1]) / max(1e-9, now - steady[0])
            progress(Progress(step + 1, cfg.steps, losses[-1], rate, (cfg.steps - step - 1) * cfg.batch * cfg.seq / rate,
                              ranks.world, steady_rate))

    if warm_step == start:
        steady = (t0, 0)
        every = every or 10**9
    frozen = _frozen_heap() if cuda else contextlib.nullcontext()
    frozen.__enter__()
    try:
        for step in range(start, cfg.steps):
            for g in opt.param_groups:
                g["lr"] = _lr(cfg, step)
            starts = torch.randint(0, len(data) - cfg.seq - 1, (cfg.batch,), generator=gen)   # the whole batch
            x = torch.stack([data[s:s + cfg.seq] for s in starts[mine]])                       # this rank's share
            x = x.pin_memory().to(dev, non_blocking=True) if cuda else x.to(dev)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
                if cfg.baseline:
                    loss = net(x)
                else:
                    ref = run_teacher(teacher, x, whole=ranks.distributed, hidden=cfg.hidden_loss > 0)
                    loss = net(x, ref, keep, cfg.hidden_loss)
                    del ref
            loss.backward()                                    # (sharded: gradients averaged over the ranks)
            writer.before_update()
            _clipped_step(opt, MAX_GRAD_NORM)
            opt.zero_grad(set_to_none=True)    # now, not before the next backward: the gradients (a
                                               # float32 copy of the student) are not held through the
                                               # next forward pass, when its activations peak
            pending.put(step, loss)
            last = step + 1 == cfg.steps or (stop_after is not None and step + 1 >= stop_after)
            saving = last or (every is not None and (step + 1) % every == 0)
            report(flush=saving or last)
            if saving:
                writer.save(student, opt, {"settings": _settings(asdict(cfg)), "step": step + 1,
                                           "losses": losses}, gen.get_state())
            if stop_after is not None and step + 1 >= stop_after:
                break
    except BaseException:
        writer.close(quiet=True)
        raise
    finally:
        frozen.__exit__(None, None, None)
    writer.close()
    student.eval()
    return losses


HOW = ("device", "teacher_precision", "compile")     # how a run computes, not what it trains


def _settings(config: dict) -> dict:
    """What a resumed run must share with its checkpoint: all but where and how it runs."""
    return {k: v for k, v in config.items() if k not in HOW}


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
