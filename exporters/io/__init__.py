"""edgellm.exporters.io: checkpoint I/O."""
