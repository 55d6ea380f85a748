"""edgellm.exporters.verify: verification and quality gates."""
