"""Distillation checkpoints as data only: one safetensors file and one JSON file.

Security boundary: a work folder sits beside the output, where anyone who can write there can
plant files, and ``--resume`` reads what it finds.  So nothing in it is unpickled (torch's
distributed checkpoint keeps its ``.metadata`` as a pickle: that format is not used), the folder
is one we made (fresh, mode 0700, holding ``MARKER``) or it is refused, and the state file is
checked against the sha256 that ``meta.json`` recorded when it was written.

The student's and the optimizer's state are gathered whole (``full_state_dict``) on rank 0 and
written as plain tensors named ``model/FQN`` and ``optim/FQN/KEY``; the optimizer's param groups,
the step, the losses so far, the data generator's state and the settings go to ``meta.json``.  A
checkpoint loads on any number of processes (one included): rank 0 reads it and the state is
broadcast into the shards.  It is written into ``checkpoint.partial`` and renamed into place when
whole, so an interruption leaves the previous one usable.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import os
import shutil
import stat
import warnings
from pathlib import Path

from edgellm.errors import BadInput
from edgellm.exporters.distill.ranks import Ranks, barrier

NAME = "checkpoint"
STATE = "state.safetensors"
META = "meta.json"
MARKER = ".edgellm-distill-work"
MARKER_TEXT = '{"edgellm": "distill work folder", "version": 1}\n'
MAX_META_BYTES = 64 << 20          # the losses of a long run; the tensors are in STATE


def _marked(work: Path) -> bool:
    """``work`` is a real folder of ours: not a link, owned by this user, holding our marker."""
    try:
        st = os.lstat(work)
        m = os.lstat(work / MARKER)
    except OSError:
        return False
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or not stat.S_ISREG(m.st_mode) \
            or m.st_size != len(MARKER_TEXT):
        return False
    return (work / MARKER).read_text(errors="replace") == MARKER_TEXT


def refuse_foreign(work: Path) -> None:
    """Before any work: a path at ``work`` that is not a folder of ours is refused, untouched."""
    if os.path.lexists(work) and not _marked(work):
        raise BadInput(f"{work}: exists and is not an edgellm distillation work folder; "
                       "edgellm neither uses nor deletes it (move it away)")


def prepare(work: Path, resume: bool) -> None:
    """Make ``work`` ready (rank 0 only): kept as it is when resuming from a folder of ours,
    replaced by a fresh one otherwise.  A path there that is not ours is refused, never deleted."""
    refuse_foreign(work)
    if os.path.lexists(work):
        if resume:
            return
        shutil.rmtree(work)
    work.mkdir(mode=0o700)
    os.chmod(work, 0o700)                      # whatever the umask
    fd = os.open(work / MARKER, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(MARKER_TEXT)


def discard(work: Path) -> None:
    """Remove ``work`` when the run is done, if it is ours; anything else there is left alone."""
    if _marked(work):
        shutil.rmtree(work, ignore_errors=True)


def where(work: Path) -> Path | None:
    """The usable checkpoint in ``work``, if any (the previous one when a swap was interrupted)."""
    for p in (work / NAME, work / f"{NAME}.old"):
        if os.path.lexists(p / META):          # whatever it is: reading it checks it
            return p
    return None


def _sha256(f) -> str:
    h = hashlib.sha256()
    for block in iter(lambda: f.read(1 << 22), b""):
        h.update(block)
    return h.hexdigest()


class HostBuffers:
    """Host memory that a one-GPU run's checkpoints are copied into, reused from one to the next.

    One arena of the exact size, page-locked with ``cudaHostRegister`` so copies off the GPU run
    at full speed without blocking the host.  Not torch's pinned allocator: it rounds every
    request up to a power of two (a 1.05 GB embedding and each of its two AdamW moments took 2 GB
    each, and pinning memory costs time in proportion to its size).  ``reserve`` sizes it before
    training starts (the student's parameters and AdamW's two moments of each); a tensor that
    does not fit gets memory of its own.  Where page-locking fails the arena stays ordinary memory
    (slower copies, same checkpoint)."""

    ALIGN = 64

    def __init__(self):
        self.arena = None
        self.used = 0
        self.views: dict = {}
        self.registered = False
        self.side = None

    def stream(self, device):
        """The side stream the copies run on (one GPU process: one, on ``device``, reused)."""
        import torch

        if self.side is None:
            self.side = torch.cuda.Stream(device)
        return self.side

    def reserve(self, nbytes: int) -> None:
        import torch

        self.release()
        self.arena = torch.empty(int(nbytes), dtype=torch.uint8)
        if torch.cuda.is_available() and nbytes:
            err = torch.cuda.cudart().cudaHostRegister(self.arena.data_ptr(), int(nbytes), 0)
            self.registered = int(getattr(err, "value", err)) == 0

    def get(self, key: str, t):
        """A host tensor shaped like ``t`` for ``key``, the same one at every checkpoint."""
        import torch

        buf = self.views.get(key)
        if buf is not None and buf.shape == t.shape and buf.dtype == t.dtype:
            return buf
        n = t.numel() * t.element_size()
        start = -(-self.used // self.ALIGN) * self.ALIGN
        if self.arena is not None and start + n <= self.arena.numel():
            buf = self.arena[start:start + n].view(t.dtype).view(t.shape)
            self.used = start + n
        else:
            buf = torch.empty(t.shape, dtype=t.dtype, pin_memory=torch.cuda.is_available())
        self.views[key] = buf
        return buf

    def release(self) -> None:
        import torch

        if self.registered:
            torch.cuda.cudart().cudaHostUnregister(self.arena.data_ptr())
        self.arena, self.used, self.views, self.registered = None, 0, {}, False


def _flatten(model_sd: dict, optim_sd: dict, buffers: HostBuffers | None = None) -> tuple[dict, dict, object]:
    """(tensors for safetensors, the optimizer's non-tensor part for JSON, an event or None) as a
    copy in host memory that training can no longer change.  Tensors that share storage (a tied
    head) are copied apart: safetensors refuses aliases.  ``buffers`` (one GPU process) holds the
    host memory a GPU tensor is copied into, the same at every checkpoint; those copies run on a
    stream of their own behind the work queued so far, without stopping the host, and the
    returned CUDA event says when they are done: the caller must not change the state before it
    (``Writer.before_update``) nor read the host copies before it (the writing thread waits)."""
    import torch

    tensors, seen, gpu = {}, set(), False
    stream = None

    def put(key, t):
        nonlocal gpu, stream
        t = t.detach()
        if buffers is not None and t.is_cuda:
            if stream is None:
                stream = buffers.stream(t.device)
                stream.wait_stream(torch.cuda.current_stream(t.device))
            buf = buffers.get(key, t)
            with torch.cuda.stream(stream):
                buf.copy_(t, non_blocking=True)
            t.record_stream(stream)             # not reused by the allocator before the copy is done
            tensors[key], gpu = buf, True
            return
        t = t.to("cpu").contiguous()
        if t.untyped_storage().data_ptr() in seen or buffers is not None:
            t = t.clone()                       # (a background write must not see later steps)
        seen.add(t.untyped_storage().data_ptr())
        tensors[key] = t

    for k, v in model_sd.items():
        put(f"model/{k}", v)
    scalars = {}
    for fqn, entry in optim_sd.get("state", {}).items():
        for key, v in entry.items():
            if isinstance(v, torch.Tensor):
                put(f"optim/{fqn}/{key}", v)
            else:
                scalars.setdefault(fqn, {})[key] = v
    done = None
    if gpu:
        done = torch.cuda.Event(blocking=True)      # a thread waiting on it sleeps instead of spinning
        done.record(stream)
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()}
              for g in optim_sd.get("param_groups", [])]
    return tensors, {"scalars": scalars, "param_groups": groups}, done


_DTYPES = {"float32": "F32", "float16": "F16", "bfloat16": "BF16", "float64": "F64", "int64": "I64",
           "int32": "I32", "int16": "I16", "int8": "I8", "uint8": "U8", "bool": "BOOL"}


def _write_state(path: Path, tensors: dict) -> str:
    """``tensors`` as a safetensors file (header, then each tensor's bytes in order), fsynced;
    returns its sha256.  Written here rather than by ``safetensors.save_file``, which first copies
    every tensor into a Python bytes object: that doubled the host memory of a checkpoint and held
    the interpreter's lock for seconds, stalling the training thread beside a background write.
    File writes and hashing release that lock."""
    header, offset = {}, 0
    for key, t in tensors.items():
        n = t.numel() * t.element_size()
        header[key] = {"dtype": _DTYPES[str(t.dtype).removeprefix("torch.")], "shape": list(t.shape),
                       "data_offsets": [offset, offset + n]}
        offset += n
    import torch

    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)
    h = hashlib.sha256()
    with open(path, "wb") as f:
        for block in (len(head).to_bytes(8, "little"), head):
            f.write(block)
            h.update(block)
        for t in tensors.values():
            if t.numel():
                view = memoryview(t.reshape(-1).view(torch.uint8).numpy())
                f.write(view)
                h.update(view)
        f.flush()
        os.fsync(f.fileno())
    return h.hexdigest()


def _unflatten(tensors: dict, optim_json: dict) -> tuple[dict, dict]:
    model_sd, state = {}, {}
    for key, t in tensors.items():
        kind, _, rest = key.partition("/")
        if kind == "model":
            model_sd[rest] = t
        elif kind == "optim":
            fqn, _, name = rest.rpartition("/")
            state.setdefault(fqn, {})[name] = t
        else:
            raise BadInput(f"{STATE}: unexpected tensor {key[:80]!r}")
    for fqn, entry in optim_json["scalars"].items():
        state.setdefault(fqn, {}).update(entry)
    groups = [{k: (tuple(v) if k == "betas" else v) for k, v in g.items()} for g in optim_json["param_groups"]]
    return model_sd, {"state": state, "param_groups": groups}


def _options(ranks: Ranks, loading: bool):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    if not ranks.distributed:
        return StateDictOptions()
    return StateDictOptions(full_state_dict=True, cpu_offload=True, broadcast_from_rank0=loading)


class Writer:
    """The checkpoints of one run.  Each is a consistent copy of the state at its step in host
    memory (taken before ``save`` returns), then written into ``checkpoint.partial`` and renamed
    into place.  With ``background`` (one GPU process) the writing runs in a thread while the GPU
    trains on; the next ``save`` and ``close`` wait for it, and a failed write is raised there.
    Otherwise it is written before ``save`` returns (a CPU run keeps no second copy of its state)."""

    def __init__(self, work: Path, ranks: Ranks, background: bool = False):
        self.work, self.ranks, self.background = work, ranks, background
        self.buffers = HostBuffers() if background else None
        self.thread = None
        self.error: BaseException | None = None
        self.copied = None          # the CUDA event of the last checkpoint's copies off the GPU

    def reserve(self, student) -> float:
        """Page-locked host memory for ``student``'s checkpoints (its state and AdamW's two
        moments of each parameter), taken now rather than at the first checkpoint; returns the
        seconds it took.  Only for a background writer."""
        import time

        t0 = time.perf_counter()
        if self.buffers is not None:
            sd = student.state_dict()
            params = list(student.parameters())
            nbytes = sum(t.numel() * t.element_size() for t in sd.values()) \
                + 2 * sum(p.numel() * p.element_size() for p in params) \
                + (len(sd) + 3 * len(params)) * 2 * HostBuffers.ALIGN
            self.buffers.reserve(nbytes)
        return time.perf_counter() - t0

    def save(self, student, opt, meta: dict, gen_state) -> None:
        from torch.distributed.checkpoint.state_dict import get_state_dict

        self.wait()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model_sd, optim_sd = get_state_dict(student, opt, options=_options(self.ranks, False))   # collective
        if self.ranks.main:
            tensors, optim_json, self.copied = _flatten(model_sd, optim_sd, self.buffers)
            body = {**meta, "losses": list(meta["losses"]), "optim": optim_json,
                    "generator": base64.b64encode(bytes(gen_state.tolist())).decode(), "world": self.ranks.world}
            if self.background:
                import threading

                self.thread = threading.Thread(target=self._write, args=(tensors, body, self.copied), daemon=True,
                                               name="edgellm-checkpoint")
                self.thread.start()
            else:
                self._write(tensors, body)
                self._raise()
        barrier(self.ranks)

    def before_update(self) -> None:
        """Call before the optimizer changes the state: the step's queued work waits (on the GPU,
        the host goes on) until the last checkpoint's copies off the GPU are done.  The copies
        overlap the next step's forward and backward passes, which only read the state."""
        if self.copied is not None:
            import torch

            # the side stream's device's, which need not be the current one
            torch.cuda.current_stream(self.buffers.side.device).wait_event(self.copied)
            self.copied = None

    def _write(self, tensors: dict, body: dict, copied=None) -> None:
        work = self.work
        partial, final, old = work / f"{NAME}.partial", work / NAME, work / f"{NAME}.old"
        try:
            if copied is not None:
                copied.synchronize()            # the host copies are complete
            shutil.rmtree(partial, ignore_errors=True)
            partial.mkdir(mode=0o700)
            body["state_sha256"] = _write_state(partial / STATE, tensors)
            with open(partial / META, "w") as f:
                json.dump(body, f)
                f.flush()
                os.fsync(f.fileno())
            if final.exists():
                shutil.rmtree(old, ignore_errors=True)
                final.rename(old)
            partial.rename(final)
            shutil.rmtree(old, ignore_errors=True)
        except BaseException as e:  # noqa: BLE001 - raised in the training thread by wait()
            self.error = e

    def _raise(self) -> None:
        if self.error is not None:
            e, self.error = self.error, None
            raise e

    def wait(self) -> None:
        """Until the checkpoint being written is on disk; its error, if it failed."""
        if self.thread is not None:
            self.thread.join()
            self.thread = None
        self._raise()

    def close(self, quiet: bool = False) -> None:
        """``wait``, then free the host copies; ``quiet``: a failed write is not raised (another
        error is already on its way)."""
        try:
            self.wait()
        except BaseException:
            if not quiet:
                raise
        finally:
            if self.copied is not None:             # copies queued but no thread started (an error
                self.copied.synchronize()           # in between): they must land before the memory goes
                self.copied = None
            if self.buffers is not None:
                self.buffers.release()


def save(work: Path, student, opt, meta: dict, gen_state, ranks: Ranks) -> None:
    """One checkpoint, written before returning."""
    Writer(work, ranks).save(student, opt, meta, gen_state)


def _read_meta(at: Path) -> dict:
    from edgellm.core.files import read_json_object

    meta = read_json_object(at / META, MAX_META_BYTES)
    for key, kind in (("step", int), ("losses", list), ("generator", str), ("state_sha256", str),
                      ("optim", dict), ("settings", dict)):
        if not isinstance(meta.get(key), kind) or isinstance(meta.get(key), bool):
            raise BadInput(f"{at / META}: field {key!r} is missing or not a {kind.__name__}")
    if not 0 <= meta["step"] <= 10**9 or len(meta["losses"]) != meta["step"] \
            or not all(isinstance(x, (int, float)) and math.isfinite(x) for x in meta["losses"]):
        raise BadInput(f"{at / META}: fields 'step' and 'losses' do not agree")
    optim = meta["optim"]
    if not isinstance(optim.get("scalars"), dict) or not isinstance(optim.get("param_groups"), list) \
            or not all(isinstance(g, dict) for g in optim["param_groups"]):
        raise BadInput(f"{at / META}: field 'optim' is malformed")
    return meta


def last_step(work: Path) -> int | None:
    """The step of the usable checkpoint in ``work`` (None: none, or none that reads)."""
    at = where(work) if _marked(work) else None
    try:
        return None if at is None else _read_meta(at)["step"]
    except BadInput:
        return None


def _read_state(at: Path, digest: str) -> dict:
    """The state file's tensors, read through the descriptor that was hashed: the bytes checked are
    the bytes loaded."""
    from safetensors.torch import load

    from edgellm.core.files import open_regular

    f, st = open_regular(at / STATE)
    with f:
        if _sha256(f) != digest:
            raise BadInput(f"{at / STATE}: its sha256 is not the one recorded when it was written; "
                           "the checkpoint was changed or damaged (rerun without --resume)")
        f.seek(0)
        data = f.read(st.st_size + 1)
    if len(data) != st.st_size:
        raise BadInput(f"{at / STATE}: changed while being read")
    try:
        return load(data)
    except Exception as e:  # noqa: BLE001 - safetensors' own error type
        raise BadInput(f"{at / STATE}: not a readable safetensors file ({str(e)[:160]})") from None


def load(work: Path, student, opt, settings: dict, ranks: Ranks):
    """(meta, generator state) of the checkpoint in ``work`` after loading it into ``student`` and
    ``opt``; None when there is none.  A checkpoint made with other settings is refused."""
    import torch
    from torch.distributed.checkpoint.state_dict import set_state_dict

    if not _marked(work):
        raise BadInput(f"{work}: not an edgellm distillation work folder; nothing in it is loaded")
    at = where(work)
    if at is None:
        return None
    meta = _read_meta(at)
    if meta["settings"] != settings:
        raise BadInput(f"{at}: the checkpoint was made with other settings; rerun without --resume")
    model_sd, optim_sd = {}, {}
    if ranks.main or not ranks.distributed:
        model_sd, optim_sd = _unflatten(_read_state(at, meta["state_sha256"]), meta["optim"])
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            set_state_dict(student, opt, model_state_dict=model_sd, optim_state_dict=optim_sd,
                           options=_options(ranks, True))
    except (KeyError, RuntimeError, ValueError, TypeError) as e:
        raise BadInput(f"{at}: the checkpoint does not fit this student ({type(e).__name__}: {str(e)[:160]})") from None
    try:
        gen = torch.tensor(list(base64.b64decode(meta.pop("generator"), validate=True)), dtype=torch.uint8)
        torch.Generator().set_state(gen)
    except (ValueError, RuntimeError) as e:
        raise BadInput(f"{at / META}: field 'generator' is not a generator state ({str(e)[:80]})") from None
    return meta, gen
