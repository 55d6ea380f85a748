"""Distillation checkpoints in torch's distributed checkpoint format (``torch.distributed.checkpoint``).

The student's and the optimizer's state are saved as they lie, sharded over however many ranks
wrote them, and load on any other number (one process included): DCP reshards on load.  Beside
them ``meta.json`` (rank 0's): the step, the losses so far, the data generator's state and the
settings, so a resumed run draws the same batches from the same position.  A checkpoint is
written into ``checkpoint.partial`` and renamed into place when whole: an interruption leaves the
previous one usable.
"""

from __future__ import annotations

import base64
import json
import shutil
import warnings
from pathlib import Path

from edgellm.errors import BadInput
from edgellm.exporters.distill.ranks import Ranks, barrier

NAME = "checkpoint"


def where(work: Path) -> Path | None:
    """The usable checkpoint in ``work``, if any (the previous one when a swap was interrupted)."""
    for p in (work / NAME, work / f"{NAME}.old"):
        if (p / "meta.json").is_file():
            return p
    return None


def save(work: Path, student, opt, meta: dict, gen_state, ranks: Ranks) -> None:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    partial, final, old = work / f"{NAME}.partial", work / NAME, work / f"{NAME}.old"
    if ranks.main:
        shutil.rmtree(partial, ignore_errors=True)
    barrier(ranks)
    model_sd, optim_sd = get_state_dict(student, opt)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)          # "assuming ... a single process": it is
        dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(partial))
    if ranks.main:
        body = {**meta, "generator": base64.b64encode(bytes(gen_state.tolist())).decode(), "world": ranks.world}
        (partial / "meta.json").write_text(json.dumps(body))
        if final.exists():
            shutil.rmtree(old, ignore_errors=True)
            final.rename(old)
        partial.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    barrier(ranks)


def load(work: Path, student, opt, settings: dict, ranks: Ranks):
    """(meta, generator state) of the checkpoint in ``work`` after loading it into ``student`` and
    ``opt``; None when there is none.  A checkpoint made with other settings is refused."""
    import torch
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    at = where(work)
    if at is None:
        return None
    meta = json.loads((at / "meta.json").read_text())
    if meta.get("settings") != settings:
        raise BadInput(f"{at}: the checkpoint was made with other settings; rerun without --resume")
    model_sd, optim_sd = get_state_dict(student, opt)
    state = {"model": model_sd, "optim": optim_sd}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        dcp.load(state, checkpoint_id=str(at))
    set_state_dict(student, opt, model_state_dict=state["model"], optim_state_dict=state["optim"])
    gen = torch.tensor(list(base64.b64decode(meta.pop("generator"))), dtype=torch.uint8)
    return meta, gen
