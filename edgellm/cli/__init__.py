"""The ``edgellm`` command: parses arguments and hands each subcommand to its module.

Every failure a user can cause ends in one line on stderr and a documented exit code; the
traceback appears only with ``--debug``.
"""

from __future__ import annotations

import argparse
import errno
import os
import signal
import sys
import traceback
import warnings

from edgellm import __version__
from edgellm.cli import (demo_cmd, devices_cmd, distill_cmd, eval_cmd, export_cmd, package_cmd, plan_cmd,
                         profile_cmd, report_cmd, run_cmd, verify_cmd)
from edgellm.errors import EXIT_INTERRUPTED, BadInput, EdgeLLMError, EdgeLLMWarning, Terminated, one_line

COMMANDS = (plan_cmd, export_cmd, distill_cmd, run_cmd, profile_cmd, verify_cmd, package_cmd, report_cmd, eval_cmd, devices_cmd, demo_cmd)

EPILOG = """exit codes:
  0  success
  1  failed (e.g. a file could not be written)
  2  bad input: a missing or malformed file, an unknown device, an unsupported model
  3  nothing fits the budgets (the message says what would)
  4  the hub could not be reached
  5  an export failed verification against the original model
  6  the runtime crashed in native code (the message names the file and what it said)
  7  the machine was too busy to time (device measure): other processes used the CPU
  130 interrupted (Ctrl-C); 143 terminated (SIGTERM); 129 hung up (SIGHUP)

start here:
  edgellm demo                                   build, export, verify, run and profile a demo model
  edgellm plan Qwen/Qwen2.5-0.5B-Instruct --device rpi5-8gb
  edgellm export ./my-model --device rpi5-8gb    a verified GGUF bundle (then: edgellm run / profile)
  edgellm verify ./my-model-gguf-Q8_0-rpi5-8gb   manifest, checksums, loads and generates: ok?
  edgellm devices                                known device profiles
  edgellm device measure                         profile the machine you are on
"""


class Parser(argparse.ArgumentParser):
    """Usage mistakes are one line (and exit 2), pointing at --help, like every other error."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="edgellm", formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG,
        description="Which build of a language model fits a small device, how fast it runs there, "
                    "and what it costs in quality.")
    parser.add_argument("--version", action="version", version=f"edgellm {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for cmd in COMMANDS:
        cmd.add_parser(sub)
    return parser


def _on_terminate(signum, frame) -> None:
    # raised once; a second SIGTERM while cleaning up must not cut the clean-up short
    signal.signal(signum, signal.SIG_IGN)
    raise Terminated(signum)


def _unexpected(args, e: BaseException) -> int:
    if args.debug:
        traceback.print_exc()
    print(f"edgellm: error: unexpected {type(e).__name__}: {one_line(e)} (--debug shows where)", file=sys.stderr)
    return 1


def _dispatch(args) -> int:
    try:
        return args.func(args) or 0
    except EdgeLLMError as e:
        if args.debug:
            traceback.print_exc()
        print(f"edgellm: error: {one_line(e.message)}", file=sys.stderr)
        return e.exit_code
    except Terminated as e:
        print(f"edgellm: stopped by {signal.Signals(e.exit_code - 128).name}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("edgellm: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        return 0
    except (RecursionError, ArithmeticError) as e:
        # hostile values (a nesting too deep to parse, a number too large to convert, a zero size)
        if args.debug:
            traceback.print_exc()
        print(f"edgellm: error: a value in the input is out of range ({type(e).__name__}: {one_line(e)})",
              file=sys.stderr)
        return BadInput.exit_code
    except MemoryError:
        print("edgellm: error: ran out of memory", file=sys.stderr)
        return 1
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
            return _unexpected(args, e)
        if args.debug:
            traceback.print_exc()
        where = f" writing {e.filename}" if e.filename else ""
        print("edgellm: error: " + one_line(f"no space left on the disk{where}: free some, or point the output "
                                            "(and --work-dir where the command has one) at a disk with room"),
              file=sys.stderr)
        return 1
    except Exception as e:  # noqa: BLE001 - a bug or an unforeseen failure: one line, not a traceback
        return _unexpected(args, e)
    except BaseException as e:  # noqa: BLE001 - not Exception: pyo3's PanicException, torch's CheckpointException
        if isinstance(e, (SystemExit, GeneratorExit)):
            raise
        if args.debug:
            traceback.print_exc()
        # a native library that panics or gives up on a file it was handed: the input is at fault
        print(f"edgellm: error: a library failed on the input ({type(e).__name__}: {one_line(e)})", file=sys.stderr)
        return BadInput.exit_code


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """The library's warnings (``EdgeLLMWarning``) as one line each; others as Python shows them."""
    if issubclass(category, EdgeLLMWarning):
        print(f"edgellm: warning: {one_line(message)}", file=sys.stderr, flush=True)
    else:
        _python_warning(message, category, filename, lineno, file, line)


_python_warning = warnings.showwarning


def main(argv: list[str] | None = None) -> int:
    # transformers 5 and huggingface_hub draw their own progress bars (loading and saving weights)
    # on stderr; edgellm's stage lines say the same, and errors must stay one line
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    warnings.showwarning = _show_warning
    warnings.simplefilter("always", EdgeLLMWarning)
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    for sig in (signal.SIGTERM, getattr(signal, "SIGHUP", None)):
        if sig is not None:
            signal.signal(sig, _on_terminate)
    if getattr(args, "supervised", False):
        from edgellm.cli.supervise import supervised
        code = supervised(lambda: _dispatch(args), args.bundle, show_all=args.debug)
    else:
        code = _dispatch(args)
    if argv is None:
        _ignore_late_signals()
    return code


def _ignore_late_signals() -> None:
    """The work is done and its result in place; what is left is the interpreter's teardown (torch's
    atexit hooks take a moment).  A signal arriving now must not turn a finished export into a
    traceback or a false 'interrupted': the command exits with the code its work earned."""
    for sig in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGHUP", None)):
        if sig is not None:
            signal.signal(sig, signal.SIG_IGN)
