"""edgellm.exporters.gguf: GGUF export."""
