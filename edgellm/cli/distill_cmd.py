"""``edgellm distill TEACHER -o STUDENT``: a smaller student pruned from the teacher and distilled."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from edgellm.cli.common import positive_float, positive_int, print_json
from edgellm.cli.progress import StageLine
from edgellm.errors import BadInput
from edgellm.units import fmt_count

HELP = """Make a smaller model that learns from TEACHER: the student starts from the teacher's own
weights, pruned in depth (the layers that change the residual stream least) and width (MLP
channels, key/value head groups and embedding channels with the least activation), then trains to
match the teacher's next-token distributions (KL divergence at --temperature, optionally plus
--hidden-loss on the final hidden state).  The output is a standard Hugging Face folder with the
teacher's tokenizer and a card (edgellm-distill.json, README.md) that `edgellm export` and
`edgellm eval` take.

Size: --size 0.25 (a share of the teacher's non-embedding parameters), --params 50M (total), or
--layers N --hidden H.  Length: --steps N or --tokens N (batches of --batch x --seq tokens).
Checkpoints go to a work folder beside the output every 10 minutes of training (or every
--checkpoint-every N steps) and at the end (on one GPU, written while training goes on); after an
interruption, the same command with --resume continues and ends where an uninterrupted run would,
on the same number of GPUs or another.  On one GPU the layers are compiled and, where the GPU
multiplies FP8 and the teacher measures close to itself, the teacher runs in FP8
(--teacher-precision, --no-compile).
Families: llama, mistral, qwen2, qwen3.

examples:
  edgellm distill ./my-model --size 0.25 -o my-model-student
  edgellm distill ./my-model --params 50M --data corpus.txt --tokens 20M --device cuda -o small
  edgellm distill ./my-model --layers 4 --hidden 512 --steps 200 -o tiny --resume
  edgellm distill ./big-model --params 1B --gpus 2 -o student      FSDP2 over 2 GPUs (torchrun)
  torchrun --nproc-per-node 8 -m edgellm distill ./big-model --params 1B --device cuda -o student
"""


def count_arg(text: str) -> int:
    t = text.strip().upper()
    mult = {"K": 1e3, "M": 1e6, "B": 1e9, "G": 1e9}.get(t[-1:], 1)
    try:
        v = int(float(t[:-1] if t[-1:] in "KMBG" else t) * mult)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a count like 50M or 2000000, got {text!r}") from None
    if v <= 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, got {text!r}")
    return v


REQUEST_LIMIT = 4 * (256 << 20) + (1 << 20)     # the request holds --data's text (256 MiB at most), escaped


def add_parser(sub) -> None:
    p = sub.add_parser("distill", help="prune and distil a smaller student from a model", description=HELP,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("teacher", metavar="TEACHER", help="local model folder or hub id (llama-family)")
    p.add_argument("-o", "--output", type=Path, required=True, help="student folder to write")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--size", type=positive_float, help="share of the teacher's non-embedding parameters")
    size.add_argument("--params", type=count_arg, help="total parameters of the student (e.g. 50M)")
    p.add_argument("--layers", type=positive_int, help="student depth (with or without --hidden)")
    p.add_argument("--hidden", type=positive_int, help="student hidden size")
    p.add_argument("--data", type=Path, metavar="FILE", help="UTF-8 training text, at most 256 MiB (default: built-in text)")
    length = p.add_mutually_exclusive_group()
    length.add_argument("--steps", type=positive_int, help="training steps (default 500)")
    length.add_argument("--tokens", type=count_arg, help="training tokens (sets the steps)")
    p.add_argument("--batch", type=positive_int, default=8, help="sequences per step (default 8)")
    p.add_argument("--seq", type=positive_int, default=256, help="tokens per sequence (default 256)")
    p.add_argument("--lr", type=positive_float, default=1e-3, help="peak learning rate (default 1e-3)")
    p.add_argument("--temperature", type=positive_float, default=1.0, help="distillation temperature (default 1)")
    p.add_argument("--hidden-loss", type=float, default=0.0, metavar="W",
                   help="weight of the final-hidden-state MSE loss (default 0: logits only)")
    p.add_argument("--checkpoint-every", type=positive_int, metavar="N",
                   help="steps between checkpoints (default: as many as take 10 minutes, timed on the first "
                        "steps after the warm-up)")
    p.add_argument("--device", default="auto", metavar="{auto,cpu,cuda}",
                   help="where to train: auto (default: a GPU when torch sees one), cpu, cuda or cuda:N")
    ranks = p.add_mutually_exclusive_group()
    ranks.add_argument("--gpus", type=positive_int, metavar="N",
                       help="train on N GPUs of this machine: N processes under torchrun, teacher and student "
                            "sharded with FSDP2 over NCCL (implies --device cuda)")
    ranks.add_argument("--processes", type=positive_int, metavar="N",
                       help="the same on the CPU: N processes over gloo (--device cpu)")
    p.add_argument("--teacher-precision", choices=("auto", "fp32", "bf16", "fp8"), default="auto",
                   help="the teacher's arithmetic: auto (default) is fp32 on a CPU; on one GPU, fp8 where the GPU "
                        "multiplies FP8 (Ada, Hopper) and the teacher's next-token distributions measure within "
                        "0.01 nats of bf16's on the training text, else bf16")
    p.add_argument("--no-compile", dest="compile", action="store_false", default=None,
                   help="do not torch.compile the layers (compiled by default on one GPU: about a minute of "
                        "compilation at the start buys faster steps)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true", help="continue an interrupted run from its checkpoint")
    p.add_argument("--force", action="store_true", help="replace an existing output folder")
    p.add_argument("--trust-remote-code", action="store_true", help="let transformers run the teacher's own code")
    p.add_argument("--json", action="store_true", help="print the card as JSON")
    p.set_defaults(func=run)
    # one rank of ``--gpus/--processes`` (started by torchrun): the parsed request, from a file
    r = sub.add_parser("distill-rank", add_help=False)
    r.add_argument("request", type=Path)
    r.add_argument("result", type=Path)
    r.set_defaults(func=run_rank)


def request_from(args, teacher: Path, out: Path):
    from edgellm.cli.eval_cmd import read_text
    from edgellm.exporters.distill.train import DistillConfig
    from edgellm.exporters.distill.student import StudentRequest

    if not (args.size or args.params or args.layers or args.hidden):
        raise BadInput("give the student's size: --size 0.25, --params 50M, or --layers N [--hidden H]")
    if (args.size or args.params) and (args.layers or args.hidden):
        raise BadInput("give --size/--params or --layers/--hidden, not both")
    steps = args.steps or (max(1, args.tokens // (args.batch * args.seq)) if args.tokens else 500)
    cfg = DistillConfig(steps=steps, batch=args.batch, seq=args.seq, lr=args.lr, temperature=args.temperature,
                        hidden_loss=args.hidden_loss, checkpoint_every=args.checkpoint_every, seed=args.seed,
                        device=args.device, teacher_precision=args.teacher_precision, compile=args.compile)
    data = read_text(args.data) if args.data else None
    return StudentRequest(teacher, out, cfg, args.size, args.params, args.layers, args.hidden, data,
                          str(args.data) if args.data else StudentRequest.data_name, args.resume, args.force,
                          args.trust_remote_code)


def run(args) -> int:
    from edgellm.pipeline import need_export_extra
    need_export_extra()
    from edgellm.exporters.io.weights_source import weights_folder

    req = request_from(args, weights_folder(args.teacher), args.output)
    if args.gpus or args.processes:
        record = _launch(args, req)
    else:
        record = _distil(req)
    if record:                                  # a rank other than the first returns none: rank 0 reports
        _show_result(args, req.out, record)
    return 0


def _distil(req) -> dict:
    from edgellm.exporters.distill.student import distill_student

    line = StageLine()

    def show(p) -> None:
        per = f" ({p.tokens_per_s / p.devices:,.0f} per process)" if p.devices > 1 else ""
        line(f"distilling: step {p.step}/{p.steps}, loss {p.loss:.4f}, {p.tokens_per_s:,.0f} tok/s{per}, "
             f"ETA {p.eta_s / 60:.1f} min")
    try:
        return distill_student(req, say=line, progress=show).record
    finally:
        line.done()


def run_rank(args) -> int:
    """One rank under torchrun: the request the launching command parsed; rank 0 leaves the
    student's record where the launcher reads it."""
    from edgellm.core.files import atomic_write, read_json_object
    from edgellm.exporters.distill.student import StudentRequest

    record = _distil(StudentRequest.from_dict(read_json_object(args.request, REQUEST_LIMIT)))
    if record:
        atomic_write(args.result, json.dumps(record).encode())
    return 0


def _show_result(args, folder: Path, record: dict) -> None:
    if args.json:
        print_json({"student": str(folder), **record})
        return
    r, m = record, record["metrics"]
    print(f"wrote {folder}/ ({fmt_count(r['student']['parameters'])} params, {r['student']['layers']} layers, "
          f"hidden {r['student']['hidden']}; {r['student']['share_of_teacher_non_embedding']:.0%} of the teacher's "
          f"non-embedding parameters)")
    print(f"held-out perplexity: student {m['student_perplexity']:.3f}, teacher {m['teacher_perplexity']:.3f}; "
          f"KLD from the teacher {m['kld_vs_teacher']:.4f}; loss {m['first_loss']:.3f} -> {m['final_loss']:.3f}")
    print(f"export it: edgellm export {folder} --device DEVICE")


def _launch(args, req) -> dict:
    """``req`` run as N ranks under torchrun (``launch``): each rank reads the parsed request from
    a file beside the output (nothing of the command line is rewritten); rank 0 writes the record."""
    import dataclasses
    import os

    from edgellm.cli.launch import run_ranks
    from edgellm.core.files import atomic_write, read_json_object
    from edgellm.exporters.compute import resolve
    from edgellm.exporters.distill.ranks import launched_world
    from edgellm.exporters.distill.student import work_dir

    if launched_world() > 1:
        raise BadInput("--gpus/--processes start torchrun themselves; under torchrun, leave them out")
    n = args.gpus or args.processes
    if args.gpus:
        import torch

        if not torch.cuda.is_available():
            raise BadInput(f"--gpus {args.gpus}: torch {torch.__version__} sees no CUDA device here; "
                           f"--processes {args.gpus} runs the same on the CPU (gloo)")
        if args.gpus > torch.cuda.device_count():
            raise BadInput(f"--gpus {args.gpus}: this machine has {torch.cuda.device_count()} GPU(s)")
        device = "cuda"
    elif resolve(args.device) != "cpu":
        raise BadInput("--processes runs on the CPU (gloo); for GPUs use --gpus N")
    else:
        device = "cpu"
    if args.batch % n:
        raise BadInput(f"--batch {args.batch} does not split over {n} processes; give a multiple")
    req = dataclasses.replace(req, config=dataclasses.replace(req.config, device=device))
    out = Path(args.output)
    request = out.with_name(f".{out.name}.distill-request.json")
    result = out.with_name(f".{out.name}.distill-result.json")
    atomic_write(request, json.dumps(req.to_dict()).encode())
    os.chmod(request, 0o600)
    result.unlink(missing_ok=True)
    try:
        run_ranks(n, ["distill-rank", str(request), str(result)], out, work_dir(out))
        return read_json_object(result) if result.is_file() else {}
    finally:
        request.unlink(missing_ok=True)
        result.unlink(missing_ok=True)
