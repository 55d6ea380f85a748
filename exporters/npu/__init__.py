"""edgellm.exporters.npu: the static NPU build."""
