"""edgellm.runtime: what runs on the device.  Imports numpy and the inference backends only, never
torch, so that a phone or a Raspberry Pi needs nothing of the host toolchain.

Today it holds the measurements behind ``edgellm device measure`` (host facts, memory bandwidth,
matmul throughput); the llama.cpp and onnxruntime backends join it with the export paths.
"""
