"""What a calibrated export will need, predicted from the model's shape before any work: host RAM
and GPU memory at the peak, and temporary disk (the hidden states at every layer boundary).

The peak is the largest of the phases of ``layers`` and of the GGUF writer after it:

- one decoder layer at a time: its float32 weights, gradients and Fisher sums, and the autograd
  graph of one window through it;
- the head pass: the head (or the embedding table, when tied) in float32 and a slice of logits
  with its softmax and gradients (``common.LOGITS_BYTES``);
- the writer: one layer's XᵀX matrices, and GPTQ's factor for the widest input while it is made
  and kept (``gguf.gptq``; on the GPU when calibrating on one, the XᵀX coming back to the host);

and, in the forward pass, the layer's XᵀX as it is gathered and the last layer's as it is written;
plus, throughout, the process itself (Python, torch, transformers, the tokenizer) and the gradient
at a layer boundary for every window the Fisher is estimated on.  The temporary disk holds every
layer boundary's hidden states of the windows the later passes re-run (the Fisher's and XᵀX's),
and the current layer's input and output of the others; and, where they take at most half the
free disk (``xtx_disk``, checked as the work starts, not refused without it), every layer's XᵀX.
``benchmarks/calibration_memory.py`` checks the prediction
against the measured peak.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edgellm.errors import EdgeLLMError
from edgellm.exporters.calibrate.common import FISHER_WINDOWS, HESSIAN_WINDOWS, SINK_QUEUE_BYTES, spread

PROCESS = 700 << 20          # Python, torch, transformers, the tokenizer, before any tensor of the model
MARGIN = 1.15                # allocator slack over the sum of the tensors alive at the peak


@dataclass(frozen=True)
class CalibrationNeed:
    ram: int                 # host bytes at the peak
    gpu: int                 # GPU bytes at the peak (0 when calibrating on the CPU)
    disk: int                # temporary file of the layer-boundary hidden states
    device: str = "cpu"
    xtx_disk: int = 0        # more temporary disk, used where free: every layer's XᵀX (``xtx_disk``)

    def describe(self) -> str:
        from edgellm.units import fmt_bytes

        gpu = f", {fmt_bytes(self.gpu)} of GPU memory ({self.device})" if self.gpu else ""
        xtx = f" (and {fmt_bytes(self.xtx_disk)} more to keep XᵀX, where free)" if self.xtx_disk else ""
        return f"about {fmt_bytes(self.ram)} of RAM{gpu} and {fmt_bytes(self.disk)} of temporary disk{xtx}"

    def to_dict(self) -> dict:
        return {"ram_bytes": self.ram, "gpu_bytes": self.gpu, "temp_disk_bytes": self.disk,
                "xtx_disk_bytes": self.xtx_disk, "device": self.device}


def need(model, context: int, windows: int, hessian: bool = True, fisher: bool = True, keep_fisher: bool = False,
         device: str = "cpu", fisher_windows: int | None = FISHER_WINDOWS,
         hessian_windows: int | None = HESSIAN_WINDOWS) -> CalibrationNeed:
    from edgellm.exporters.calibrate.common import LOGITS_BYTES

    h, f, v, n = model.hidden, model.ffn, model.vocab, model.n_layers
    q = model.n_heads * model.head_dim
    table = 4 * v * h
    layer = 4 * max(model.n_params - model.n_embedding_params - (0 if model.tied_embeddings else v * h), 0) // n
    grams = layer_grams(model) if hessian else 0               # one layer's distinct inputs
    graph = 4 * context * (16 * h + 6 * f + 3 * model.n_heads * context)      # one window through one layer
    # a layer in float32 (+ its bfloat16 copy under autocast) and one window's graph through it; forward:
    # the layer's XᵀX as it is gathered and the last layer's as it is written; backward: gradients
    # and Fisher sums
    # + the next layer read ahead as stored (bfloat16, as checkpoints are: half the float32 layer)
    # the backward pass: the Fisher sums of the layer's matrices (a mixture's experts have none; the
    # weights themselves get no gradient: ``layers``), and each expert's bfloat16 weights the
    # forward made for its products, which the backward keeps
    experts = 4 * sum(t.n_elements for t in model.tensors if t.experts > 1) // n
    backward = (layer - experts) + experts // 2
    layer_phase = layer + layer // 2 + graph + max(2 * grams, backward if fisher else 0) + layer // 2
    head_phase = table + (5 * LOGITS_BYTES if fisher else 2 * LOGITS_BYTES)
    fw = spread(windows, fisher_windows) if fisher else []
    hw = spread(windows, hessian_windows) if hessian else []
    boundary = 4 * len(fw) * context * h           # the gradient at a layer boundary, per Fisher window
    kept = 4 * model.n_params if fisher and keep_fisher else 0
    widest = max(h, f, q)
    # GPTQ's factor of the widest input while it is made (two float32 n x n), or kept (one, with its
    # cached block solves: half of one more) while a tensor of the layer is rounded (float32, a copy)
    gptq = grams + max(8 * widest * widest, 6 * widest * widest + 8 * h * f) if hessian else 0
    stats = max(layer_phase, head_phase) + boundary
    on_gpu = device.startswith("cuda")
    if on_gpu:                  # the layers, the statistics and GPTQ's factor on the GPU; the host keeps
        # the process, the XᵀX as they come back, one flipped copy of H while its factor is made and
        # a tensor's rows
        # + the Fisher rows queued for the cost table's thread (common.SINK_QUEUE_BYTES, and one
        # tensor beyond it, which may come whole: at most two of a layer's matrices fused)
        matrix = max((t.n_elements for t in model.tensors if t.ne1 > 1 and t.experts == 1 and t.name.startswith("blk.")),
                     default=0)
        gpu = int(MARGIN * max(stats + grams, gptq))
        ram = int(MARGIN * (kept + grams + 4 * widest * widest + 8 * h * f + layer + SINK_QUEUE_BYTES
                            + 2 * 4 * matrix)) + PROCESS   # + two layers as read
    else:
        gpu = 0
        ram = int(MARGIN * (max(stats, gptq) + kept)) + PROCESS
    disk = 4 * context * h * states_blocks(n + 1, windows, len({*fw, *hw}))
    return CalibrationNeed(ram, gpu, disk, device, n * grams)


def preflight(model, context: int, windows: int, hessian: bool, fisher: bool, keep_fisher: bool, device: str,
              work_dir: Path, label: str, **kept) -> CalibrationNeed:
    """``need``, refused before any work when the machine has not got it (RAM, GPU memory, disk)."""
    import shutil

    from edgellm.exporters.compute import gpu_memory
    from edgellm.runtime.hostinfo import probe
    from edgellm.units import fmt_bytes

    got = need(model, context, windows, hessian, fisher, keep_fisher, device, **kept)
    hint = "(calibrate on a bigger host, with fewer --calib-windows, or export without --calibrate)"
    have = probe().ram_bytes
    if got.ram > 0.9 * have:
        raise EdgeLLMError(f"calibrating {label} needs {got.describe()}; this machine has {fmt_bytes(have)} "
                           f"of RAM {hint}")
    if got.gpu:
        free, total = gpu_memory(device)
        if got.gpu > 0.9 * free:
            raise EdgeLLMError(f"calibrating {label} needs about {fmt_bytes(got.gpu)} of GPU memory; {device} "
                               f"has {fmt_bytes(free)} free of {fmt_bytes(total)} (--calib-device cpu, or fewer "
                               f"--calib-windows)")
    free_disk = shutil.disk_usage(work_dir).free
    if got.disk > free_disk:
        raise EdgeLLMError(f"calibrating {label} needs {fmt_bytes(got.disk)} of temporary disk in {work_dir}; "
                           f"it has {fmt_bytes(free_disk)} free (free some space, set TMPDIR, or use fewer "
                           f"--calib-windows)")
    return got


def preflight_layers(model_dir: Path, context: int, windows: int, hessian: bool, fisher: bool,
                      keep_fisher: bool, device: str = "cpu", work_dir: Path | None = None, **kept):
    """``preflight`` for the model in ``model_dir``: refused before any work."""
    import tempfile

    from edgellm import models
    
    model = models.load_config(str(model_dir))
    return preflight(model, min(context, model.max_context), windows, hessian, fisher, keep_fisher, device,
                     Path(work_dir or tempfile.gettempdir()), str(model_dir), **kept)


DISK_SPARE = 1 << 30         # XᵀX is kept on disk where it takes at most half the free disk, less this


def layer_grams(model) -> int:
    """Bytes of one decoder layer's XᵀX matrices in float32, its distinct inputs: attention's, its
    output projection's, the MLP's, the down projection's."""
    h, f, q = model.hidden, model.ffn, model.n_heads * model.head_dim
    return 4 * (2 * h * h + q * q + f * f)


def xtx_disk(model_dir: Path) -> int:
    """Temporary disk for every layer's XᵀX, gathered in the forward pass (``layers._Grams``)."""
    from edgellm import models

    model = models.load_config(str(model_dir))
    return model.n_layers * layer_grams(model)


def states_blocks(boundaries: int, windows: int, kept: int) -> int:
    """Hidden-state blocks (one window at one boundary) the temporary file holds (``layers._States``)."""
    return boundaries * kept + 2 * (windows - kept)
