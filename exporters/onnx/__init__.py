"""edgellm.exporters.onnx: ONNX export."""
