"""Distillation over several processes (torch.distributed, FSDP2), on CPUs with gloo as the CI
has them: the same result as one process, resumable on another process count, and a lost rank
is one line with the checkpoint left usable."""

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

HELPER = Path(__file__).with_name("distill_ranks_helper.py")
ARGS = ("--layers", "2", "--steps", "4", "--batch", "4", "--seq", "64", "--checkpoint-every", "2", "--device", "cpu")


@pytest.fixture(scope="module")
def teacher():
    from edgellm.exporters.reference_model import reference_model
    return reference_model("small")


@pytest.fixture(scope="module")
def one_process(teacher, tmp_path_factory):
    from edgellm.cli import main

    out = tmp_path_factory.mktemp("one") / "s"
    assert main(["distill", str(teacher), *ARGS, "-o", str(out)]) == 0
    return out


def _weights(folder: Path) -> dict:
    from safetensors.numpy import load_file
    return load_file(folder / "model.safetensors")


# Two processes sum their gradients in another order than one does, and AdamW magnifies that
# rounding where a gradient is near zero: the largest gap seen is 1.4e-5 (a Xeon's AVX512
# kernels; under 1e-5 on other CPUs).  Training on other data (--seed 1) moves every tensor's
# largest weight by 4e-3 or more, so 1e-4 stays 40x below what a sharding bug would show.
ATOL = 1e-4


def _close(a: dict, b: dict) -> None:
    assert set(a) == set(b)
    for k in a:
        assert np.allclose(a[k], b[k], rtol=1e-4, atol=ATOL), (k, float(np.abs(a[k] - b[k]).max()))


def _torchrun(n: int, argv, env=None, timeout=600):
    import subprocess
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(n),
                           str(HELPER), *argv], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def test_two_processes_give_what_one_gives(run_cli, teacher, one_process, tmp_path):
    r = run_cli("distill", str(teacher), *ARGS, "--processes", "2", "-o", str(tmp_path / "s"), "--json", timeout=600)
    assert r.returncode == 0, r.stderr
    card = json.loads(r.stdout)
    assert card["throughput"]["processes"] == 2 and card["throughput"]["tokens_per_s"] > 0
    assert "training on cpu and 1 more processes (FSDP2)" in r.stderr and "per process)" in r.stderr
    assert not list(tmp_path.glob(".s.*"))                         # no work folder, no log left
    _close(_weights(tmp_path / "s"), _weights(one_process))


def test_a_two_process_checkpoint_resumes_in_one_process(teacher, one_process, tmp_path):
    from edgellm.exporters.distill.student import StudentRequest, distill_student, work_dir
    from edgellm.exporters.distill.train import DistillConfig

    out = tmp_path / "s"
    r = _torchrun(2, ["distill", str(teacher), *ARGS, "-o", str(out)], env={"EDGELLM_TEST_STOP_AFTER": "2"})
    assert r.returncode != 0 and "stopped after step 2 of 4; --resume continues" in r.stderr, r.stderr[-3000:]
    meta = json.loads((work_dir(out) / "checkpoint" / "meta.json").read_text())
    assert meta["step"] == 2 and meta["world"] == 2 and not out.exists()
    cfg = DistillConfig(steps=4, batch=4, seq=64, checkpoint_every=2, device="cpu")
    distill_student(StudentRequest(teacher, out, cfg, layers=2, resume=True))
    _close(_weights(out), _weights(one_process))


def test_a_lost_rank_stops_the_run_with_one_line_and_the_checkpoint_stays(teacher, tmp_path, capsys, monkeypatch):
    from edgellm.cli.launch import run_ranks
    from edgellm.errors import EdgeLLMError
    from edgellm.exporters.distill.student import StudentRequest, distill_student, work_dir
    from edgellm.exporters.distill.train import DistillConfig

    out = tmp_path / "s"
    monkeypatch.setenv("EDGELLM_TEST_KILL", "1:3")                 # rank 1 dies at step 3
    with pytest.raises(EdgeLLMError) as e:
        run_ranks(2, ["distill", str(teacher), *ARGS, "-o", str(out)], out, work_dir(out), entry=(str(HELPER),))
    monkeypatch.delenv("EDGELLM_TEST_KILL")
    msg = e.value.message
    assert msg.startswith("distilling over 2 processes stopped: rank 1 was killed (signal 9); the last "
                          "checkpoint (step 2) stays usable with --resume"), msg
    assert "\n" not in msg and "Traceback" not in capsys.readouterr().err
    cfg = DistillConfig(steps=4, batch=4, seq=64, checkpoint_every=2, device="cpu")
    done = distill_student(StudentRequest(teacher, out, cfg, layers=2, resume=True))
    assert done.record["steps"] == 4 and (out / "model.safetensors").is_file()


def test_the_root_cause_is_the_killed_rank_not_the_ones_torchrun_stopped_after_it():
    """torchrun lists the ranks it terminated first and the first failure under "Root Cause"; the
    survivors may also print their own collective errors (gloo: connection reset) before they are
    stopped: the killed rank is the story."""
    from edgellm.cli.launch import _root_cause

    report = """Failures:
[1]:
  rank      : 0 (local_rank: 0)
  exitcode  : -15 (pid: 18139)  (SIGTERM)
------------------------------------------------------
Root Cause (first observed failure):
[0]:
  rank      : 1 (local_rank: 1)
  exitcode  : -9 (pid: 18140)  (SIGKILL)
"""
    assert _root_cause(report) == ("1", -9)
    assert _root_cause("  rank      : 3 (local_rank: 3)\n  exitcode  : 2 (pid: 1)") == ("3", 2)
    assert _root_cause("nothing") == ("?", None)
