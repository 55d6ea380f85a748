"""edgellm: make a Hugging Face causal LM run well on a small device.

Data flows one way: load -> plan -> compress -> export -> verify -> package.  This package is the
light, torch-free side (profiles, planner, CLI); ``edgellm.runtime`` runs artifacts on the device,
``edgellm.exporters`` (host only, needs the ``[export]`` extra) produces them.
"""

__version__ = "0.1.0"
