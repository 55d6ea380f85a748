"""``edgellm run BUNDLE -p TEXT``: the bundle on this machine."""

from __future__ import annotations

import sys
from pathlib import Path

from edgellm.cli.common import non_negative_float, positive_int
from edgellm.errors import BadInput


def add_parser(sub) -> None:
    r = sub.add_parser("run", help="generate text with an exported bundle",
                       description="Check the bundle's checksums, load it and stream generated text. "
                                   "Models with a chat template get the prompt as a user message.")
    r.add_argument("bundle", help="bundle folder written by `edgellm export`")
    src = r.add_mutually_exclusive_group(required=True)
    src.add_argument("-p", "--prompt", help="prompt text; - reads it from standard input")
    src.add_argument("--prompt-file", type=Path, metavar="FILE", help="read the prompt from a UTF-8 text file")
    r.add_argument("--max-tokens", type=positive_int, default=128, help="tokens to generate (default 128)")
    r.add_argument("--temperature", type=non_negative_float, default=0.0,
                   help="0 for greedy (default), e.g. 0.7 to sample")
    r.add_argument("--seed", type=int, default=0, help="sampling seed")
    r.add_argument("--raw", action="store_true", help="do not apply the chat template")
    r.add_argument("--threads", type=positive_int, default=None, help="threads (default: all usable)")
    r.add_argument("--context", type=positive_int, default=2048, help="context length (default 2048)")
    r.set_defaults(func=run, supervised=True)


def _open(path: str, n_ctx: int, threads):
    from edgellm.runtime.backend import open_backend

    return open_backend(path, n_ctx=n_ctx, threads=threads)


MAX_PROMPT_BYTES = 16 << 20


def read_prompt(args) -> str:
    """The prompt from -p, -p - (standard input) or --prompt-file, as checked UTF-8 text."""
    if args.prompt_file is not None:
        from edgellm.core.files import read_small_bytes
        data, where = read_small_bytes(args.prompt_file, MAX_PROMPT_BYTES), str(args.prompt_file)
    elif args.prompt == "-":
        data, where = sys.stdin.buffer.read(MAX_PROMPT_BYTES + 1), "standard input"
        if len(data) > MAX_PROMPT_BYTES:
            raise BadInput(f"the prompt on standard input is longer than {MAX_PROMPT_BYTES >> 20} MiB")
    else:
        try:
            args.prompt.encode("utf-8")
        except UnicodeEncodeError:
            raise BadInput("the prompt given with -p is not valid UTF-8 text (pass it with --prompt-file "
                           "or -p - if it comes from a file)") from None
        return args.prompt
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise BadInput(f"the prompt from {where} is not valid UTF-8 text (byte {e.start})") from None


def run(args) -> int:
    prompt = read_prompt(args)
    bundle, model = _open(args.bundle, args.context, args.threads)
    chat = not args.raw and model.has_chat_template
    for piece in model.stream(prompt, args.max_tokens, args.temperature, chat=chat, seed=args.seed):
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")
    return 0
