"""``edgellm distill --gpus N`` (or ``--processes N`` on CPUs): N ranks under torchrun.

torchrun (``python -m torch.distributed.run --standalone``) starts N copies of ``edgellm
distill-rank REQUEST RESULT``, each reading the request the command parsed; each joins the process
group (``exporters.distill.ranks``).  What rank 0 prints
comes through as it is; torchrun's own logging and a failed rank's traceback go to a log beside the
output, and a run that stops ends with one line: which rank, how, and the checkpoint it left.
"""

from __future__ import annotations

import re
import subprocess
import sys
import threading
from pathlib import Path

from edgellm.errors import EdgeLLMError

TORCHRUN_LOG = re.compile(r"^[WEIF]\d{4} |^\*{5,}|^Traceback |^  |^torch\.distributed\.|^\[|^=+$|^-+$|^\w*Error\b|"
                          r"^Root Cause|^Failures:|^<NO_OTHER_FAILURES>|^\s*(time|host|rank|exitcode|error_file|"
                          r"traceback)\s*:")


def run_ranks(n: int, argv: list[str], out: Path, work: Path, entry: tuple[str, ...] = ("-m", "edgellm")) -> int:
    """Run ``edgellm <argv>`` (``entry``: what torchrun starts) as ``n`` ranks; 0 when they all
    finish, else one line (EdgeLLMError)."""
    log = out.with_name(f".{out.name}.distill-ranks.log")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(n),
           *entry, *argv]
    errors: list[str] = []
    with open(log, "w") as keep:
        proc = subprocess.Popen(cmd, stdout=None, stderr=subprocess.PIPE, text=True, bufsize=1)

        def pump() -> None:
            for line in proc.stderr:
                keep.write(line)
                keep.flush()
                if line.startswith("edgellm: error:"):
                    errors.append(line.strip())
                elif not TORCHRUN_LOG.search(line):
                    sys.stderr.write(line)
                    sys.stderr.flush()
        t = threading.Thread(target=pump, daemon=True)
        t.start()
        try:
            rc = proc.wait()
        except KeyboardInterrupt:
            proc.terminate()
            proc.wait()
            raise
        t.join()
    if rc == 0:
        log.unlink(missing_ok=True)
        return 0
    from edgellm.exporters.distill.checkpoint import last_step

    text = log.read_text(errors="replace")
    step = last_step(work)
    if step is not None:
        kept = f"the last checkpoint (step {step}) stays usable with --resume"
    else:
        kept = "no checkpoint was written yet"
    rank, code = _root_cause(text)
    if code is not None and code < 0:       # a rank killed: the others' errors are its echo
        raise EdgeLLMError(f"distilling over {n} processes stopped: rank {rank} was killed (signal {-code}); "
                           f"{kept} (all ranks' output: {log})")
    if errors:
        raise EdgeLLMError(f"{errors[0].removeprefix('edgellm: error: ')} ({kept}; all ranks' output: {log})")
    how = "was lost" if code is None else f"exited with code {code}"
    raise EdgeLLMError(f"distilling over {n} processes stopped: rank {rank} {how}; {kept} (all ranks' output: {log})")


def _root_cause(text: str) -> tuple[str, int | None]:
    """(rank, exit code) of the first failure torchrun reports ("Root Cause"; else the first listed)."""
    at = text.find("Root Cause")
    part = text[at:] if at >= 0 else text
    rank = re.search(r"rank\s*:\s*(\d+)", part)
    code = re.search(r"exitcode\s*:\s*(-?\d+)", part)
    return (rank.group(1) if rank else "?"), (int(code.group(1)) if code else None)
