"""llama.cpp's convert_hf_to_gguf.py as the peer, run on a locally trained tokenizer.

The converter identifies BPE pre-tokenizers by a hash of a test encoding and refuses any it has
not seen, which every locally trained tokenizer is (edgellm shared/anchors.md).  For timing and
memory the tokenizer does not matter, so this wrapper answers "gpt-2" — the pre-tokenizer these
benchmark tokenizers really use — and runs the converter unchanged otherwise.

Usage: python benchmarks/peer_convert.py LLAMA_CPP_DIR [convert_hf_to_gguf.py arguments...]
"""

import sys
from pathlib import Path

root = Path(sys.argv.pop(1))
sys.path[:0] = [str(root), str(root / "gguf-py")]
from conversion import base  # noqa: E402

base.TextModel.get_vocab_base_pre = lambda self, tokenizer: "gpt-2"
import convert_hf_to_gguf  # noqa: E402

convert_hf_to_gguf.main()
