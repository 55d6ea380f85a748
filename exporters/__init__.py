"""edgellm.exporters: host-side converters (GGUF, ONNX).  Needs the ``[export]`` extra.

Empty until the GGUF export lands; kept so the namespace and its packaging are in place.
"""
