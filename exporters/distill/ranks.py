"""Several processes, one distillation, on torch.distributed as ``torchrun`` starts it.

Each process (rank) is told its place by torchrun's environment (``WORLD_SIZE``, ``RANK``,
``LOCAL_RANK``); the process group is NCCL between GPUs (one per rank) and gloo on CPUs.  Teacher
and student are sharded with FSDP2 (``torch.distributed.fsdp.fully_shard``: each decoder layer,
then the whole model), so each rank holds 1/N of each and its share of the optimizer state; a
step's batch is drawn whole by the shared, seeded generator and each rank trains on its own slice
of it, so the data, and the result up to float rounding, are those of one process with the same
batch.  One process (no torchrun) is the plain path: no process group, nothing sharded.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

from edgellm.errors import BadInput

TIMEOUT_S = 600            # a collective waiting this long for a rank that is gone fails the run


@dataclass(frozen=True)
class Ranks:
    rank: int = 0
    world: int = 1
    device: str = "cpu"

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    def share(self, batch: int) -> slice:
        """This rank's sequences of a step's ``batch``."""
        per = batch // self.world
        return slice(self.rank * per, (self.rank + 1) * per)


def launched_world() -> int:
    """The number of processes torchrun started this one among (1: not under torchrun)."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1


def join(device: str, batch: int) -> Ranks:
    """This process's place: the process group joined (under torchrun) and its device
    (``device``: already resolved by ``compute.resolve``; a GPU rank takes ``cuda:LOCAL_RANK``)."""
    world = launched_world()
    if world == 1:
        return Ranks(0, 1, device)
    import torch
    import torch.distributed as dist

    if batch % world:
        raise BadInput(f"--batch {batch} does not split over {world} processes; give a multiple of {world}")
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device.startswith("cuda"):
        if local >= torch.cuda.device_count():
            raise BadInput(f"rank {local} has no GPU: this machine has {torch.cuda.device_count()}; start at most "
                           f"that many processes")
        device = f"cuda:{local}"
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo", timeout=timedelta(seconds=TIMEOUT_S))
    return Ranks(dist.get_rank(), dist.get_world_size(), device)


def shard(model, ranks: Ranks):
    """FSDP2 over all ranks: every decoder layer its own unit, then the rest."""
    if not ranks.distributed:
        return model
    import torch
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh("cuda" if ranks.device.startswith("cuda") else "cpu", (ranks.world,))
    for mod in model.modules():
        for child in mod.children():
            if isinstance(child, torch.nn.ModuleList):
                for layer in child:
                    fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def mean(value: float, ranks: Ranks) -> float:
    """``value`` averaged over the ranks (every rank gets it)."""
    if not ranks.distributed:
        return value
    import torch
    import torch.distributed as dist

    t = torch.tensor([value], dtype=torch.float64, device=ranks.device)
    dist.all_reduce(t)
    return float(t.item()) / ranks.world


def barrier(ranks: Ranks) -> None:
    if ranks.distributed:
        import torch.distributed as dist
        dist.barrier()


def leave(ranks: Ranks) -> None:
    if ranks.distributed:
        import torch.distributed as dist
        if dist.is_initialized():
            dist.destroy_process_group()
