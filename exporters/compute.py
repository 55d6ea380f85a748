"""Where the host-side torch work runs (calibration, distillation): ``auto`` (a GPU when torch
sees one, else the CPU), ``cpu``, ``cuda`` or ``cuda:N``.  The export itself (reading, quantizing,
writing) stays on the CPU and streaming whatever this says.

A GPU running out of memory mid-run is one clear line (``gpu_memory_guard``), not a traceback:
what was written before it (a distillation checkpoint) stays as it was.
"""

from __future__ import annotations

from contextlib import contextmanager

from edgellm.errors import BadInput, EdgeLLMError

def resolve(choice: str, flag: str = "--device") -> str:
    """The torch device for ``choice``; ``cuda`` where torch sees no GPU is an error naming why."""
    import torch

    choice = (choice or "auto").strip().lower()
    if choice == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if choice == "cpu":
        return "cpu"
    if choice == "cuda" or choice.startswith("cuda:"):
        if not torch.cuda.is_available():
            build = "a CPU-only build" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}"
            raise BadInput(f"{flag} {choice}: torch {torch.__version__} sees no CUDA device here ({build}); "
                           f"use {flag} cpu, or auto to take a GPU only when there is one")
        index = choice.partition(":")[2]
        if index and (not index.isdigit() or int(index) >= torch.cuda.device_count()):
            raise BadInput(f"{flag} {choice}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                           f"numbered from 0")
        return choice
    raise BadInput(f"{flag} {choice}: use auto, cpu or cuda (cuda:N for one GPU of several)")


def is_gpu(device: str) -> bool:
    return device.startswith("cuda")


def gpu_memory(device: str) -> tuple[int, int]:
    """(free, total) bytes of the GPU ``device``."""
    import torch

    return torch.cuda.mem_get_info(torch.device(device))


def peak_gpu_bytes(device: str, reserved: bool = False) -> int | None:
    """The most GPU memory tensors took; ``reserved``: that torch's allocator held (tensors and
    its cache's unused blocks)."""
    import torch

    if not is_gpu(device):
        return None
    peak = torch.cuda.max_memory_reserved if reserved else torch.cuda.max_memory_allocated
    return int(peak(torch.device(device)))


@contextmanager
def gpu_memory_guard(device: str, what: str, after: str = ""):
    """Running out of memory inside (the GPU's, or the host's: torch's CPU allocator failing)
    becomes one line naming what ran out, its size and what to do (``after``: e.g. that the last
    checkpoint stays usable)."""
    import torch

    try:
        yield
    except torch.OutOfMemoryError:
        from edgellm.units import fmt_bytes

        size = ""
        if is_gpu(device) and torch.cuda.is_available():
            size = f" ({fmt_bytes(gpu_memory(device)[1])} in all)"
            torch.cuda.empty_cache()
        raise EdgeLLMError(f"{what}: the GPU {device} ran out of memory{size}; use a smaller batch, "
                           f"or the CPU{after}") from None
    except RuntimeError as e:
        if "can't allocate memory" not in str(e):
            raise
        from edgellm.runtime.hostinfo import probe
        from edgellm.units import fmt_bytes

        raise EdgeLLMError(f"{what}: this machine ran out of memory ({fmt_bytes(probe().ram_bytes)} of RAM); "
                           f"close other programs or use a smaller batch{after}") from None
