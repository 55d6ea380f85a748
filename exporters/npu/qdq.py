"""Static QDQ quantization of the fixed-shape graph for the QNN HTP, and the checks that it will run
there.

Quantization is ONNX Runtime's own QNN recipe (``get_qnn_qdq_config`` + ``quantize``): 16-bit
unsigned activations calibrated (min/max) on sample text run through the float model, weights
8-bit or 4-bit signed, symmetric, one scale per output channel for every MatMul weight.  Then:
- every operator is checked against the QNN execution provider's supported-operator list
  (``QNN_OPS``; a node outside it is named in the error);
- the model is run on ONNX Runtime's CPU provider against the float model;
- when ``onnxruntime-qnn`` is installed, the model is also run through the QNN provider's HTP
  backend with CPU fallback disabled (so any node HTP cannot take fails the check) — on x86 this is
  Qualcomm's HTP simulator.  Otherwise the report says it was not run.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgellm.errors import BadInput

# ONNX operators the QNN execution provider maps to QNN ops (onnxruntime-qnn "Supported ONNX
# operators", the subset this graph can use), plus the QDQ pair itself.
QNN_OPS = frozenset({
    "Add", "Cast", "Concat", "Div", "Expand", "Gather", "Identity", "MatMul", "Mul", "Neg",
    "ReduceMean", "Reshape", "Sigmoid", "Slice", "Softmax", "Split", "Sqrt", "Sub", "Transpose", "Unsqueeze",
    "QuantizeLinear", "DequantizeLinear",
})
WEIGHT_BITS = {"int8": 8, "int4": 4}


def unsupported_nodes(model) -> list[str]:
    """'name (OpType)' for each node the QNN provider cannot take."""
    return [f"{n.name} ({n.op_type})" for n in model.graph.node if n.domain not in ("", "ai.onnx") or n.op_type not in QNN_OPS]


def calibration_feeds(float_path: Path, ids: list[int], windows: int) -> list[dict]:
    """Steps of sample text as the model will see them on the device: consecutive windows run
    through the float model, so later steps carry a filled cache (a cache calibrated only on
    zeros would clip every real key and value)."""
    from edgellm.runtime.onnx_static import StaticOnnxModel

    model = StaticOnnxModel(float_path, provider="cpu", tokenizer=False)
    seq, past = model.seq, model.cache_shape[2]
    if len(ids) < seq * windows:
        raise BadInput(f"calibration text has {len(ids)} tokens; at least {seq * windows} are needed")
    out, cache = [], model.new_cache()
    for b in range(windows):
        if cache["filled"] + seq > past:
            cache = model.new_cache()
        chunk = ids[b * seq:(b + 1) * seq]
        out.append({k: np.array(v, copy=True) for k, v in model.feeds(chunk, cache).items()})
        model.step(chunk, cache)
    return out


def quantize_static(float_path: Path, out_path: Path, feeds: list[dict], weights: str) -> None:
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantType, quantize
    from onnxruntime.quantization.execution_providers.qnn import get_qnn_qdq_config

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(feeds)

        def get_next(self):
            return next(self.it, None)

    model = onnx.load(str(float_path), load_external_data=False)
    wtype = QuantType.QInt8 if WEIGHT_BITS[weights] == 8 else QuantType.QInt4
    matmul_weights = {n.input[1] for n in model.graph.node if n.op_type == "MatMul"} & \
        {t.name for t in model.graph.initializer}
    overrides = {name: [{"quant_type": wtype, "axis": 1, "symmetric": True}] for name in sorted(matmul_weights)}
    cfg = get_qnn_qdq_config(str(float_path), Reader(), activation_type=QuantType.QUInt16, weight_type=QuantType.QUInt8,
                             init_overrides=overrides, weight_symmetric=True)
    cfg.use_external_data_format = True
    quantize(str(float_path), str(out_path), cfg)


def run_on_qnn(model_path: Path, feeds: dict) -> tuple[str, list[np.ndarray] | None]:
    """(what happened, outputs) running through the QNN provider's HTP backend, CPU fallback off."""
    try:
        import onnxruntime as ort
        import onnxruntime_qnn
    except ImportError:
        return "not run: onnxruntime-qnn is not installed", None
    try:
        name = onnxruntime_qnn.get_ep_name()
        if name not in {d.ep_name for d in ort.get_ep_devices()}:
            ort.register_execution_provider_library(name, onnxruntime_qnn.get_library_path())
        devices = [d for d in ort.get_ep_devices() if d.ep_name == name]
        so = ort.SessionOptions()
        so.log_severity_level = 3
        so.add_provider_for_devices(devices, {"backend_path": onnxruntime_qnn.get_qnn_htp_path()})
        so.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
        from edgellm.runtime.quiet import captured_stderr

        with captured_stderr(fd=1):                # the QNN libraries print a start-up note to stdout
            sess = ort.InferenceSession(str(model_path), so)
        return f"ran on the QNN HTP backend ({onnxruntime_qnn.__version__}), no CPU fallback", sess.run(None, feeds)
    except Exception as e:                                      # noqa: BLE001 - reported, not raised
        return f"failed on the QNN HTP backend: {str(e).splitlines()[0][:300]}", None
