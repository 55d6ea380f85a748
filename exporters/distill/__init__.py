"""edgellm.exporters.distill: pruning and distillation."""
