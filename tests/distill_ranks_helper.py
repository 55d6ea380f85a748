"""What torchrun starts in the distributed distillation tests: `edgellm distill` with test hooks.

  EDGELLM_TEST_STOP_AFTER=N       every rank stops after step N (an interruption: the checkpoint stays)
  EDGELLM_TEST_KILL=RANK:STEP     that rank kills itself (SIGKILL) at that step: a lost rank
"""

import os
import signal
import sys

import torch

import edgellm.exporters.distill.student as student
from edgellm.cli import main

stop = os.environ.get("EDGELLM_TEST_STOP_AFTER")
if stop:
    real = student.distill_student
    student.distill_student = lambda req, say=lambda s: None, progress=lambda p: None, stop_after=None: real(
        req, say, progress, int(stop))                  # (the CLI imports it when it runs)

kill = os.environ.get("EDGELLM_TEST_KILL")
if kill:
    rank, step = map(int, kill.split(":"))
    clip, calls = torch.nn.utils.clip_grad_norm_, []

    def clip_or_die(*a, **kw):
        calls.append(1)
        if len(calls) == step and int(os.environ.get("RANK", "0")) == rank:
            os.kill(os.getpid(), signal.SIGKILL)
        return clip(*a, **kw)
    torch.nn.utils.clip_grad_norm_ = clip_or_die

sys.exit(main(sys.argv[1:]))
