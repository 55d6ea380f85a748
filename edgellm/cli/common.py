"""Argument types shared by subcommands: they turn user text into values or one clear error."""

from __future__ import annotations

import argparse
import json
import math
import sys

from edgellm import units


def size_arg(text: str) -> int:
    try:
        n = units.parse_bytes(text)
    except units.UnitError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    if n <= 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, got {text!r}")
    return n


def _positive(convert, kind: str):
    def parse(text: str):
        try:
            v = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {kind}, got {text!r}") from None
        if not v > 0 or (isinstance(v, float) and not math.isfinite(v)):
            raise argparse.ArgumentTypeError(f"must be a finite number more than 0, got {text!r}")
        return v
    parse.__name__ = kind           # argparse names the type in its messages
    return parse


positive_float = _positive(float, "a number")


def non_negative_float(text: str) -> float:
    """A finite number >= 0 (a temperature): NaN, infinities and negatives are refused."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(v) or v < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number of 0 or more, got {text!r}")
    return v
positive_int = _positive(int, "a whole number")


def fraction_arg(text: str) -> float:
    """'2%' or '0.02' -> 0.02."""
    t = text.strip()
    try:
        v = float(t[:-1]) / 100 if t.endswith("%") else float(t)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a fraction like 0.02 or 2%, got {text!r}") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text!r}")
    return v


def print_json(data) -> None:
    json.dump(data, sys.stdout, indent=2)
    sys.stdout.write("\n")


def add_remote_args(p, what: str) -> None:
    """--remote, --remote-python, --ssh-config: the same on every command that reaches a device."""
    p.add_argument("--remote", metavar="[USER@]HOST[:PORT]",
                   help=f"{what} that machine through the system's ssh (your ~/.ssh/config, keys and agent apply)")
    p.add_argument("--remote-python", metavar="PATH",
                   help="with --remote: the far side's Python with edgellm (default: edgellm on its PATH)")
    p.add_argument("--ssh-config", metavar="FILE", help="with --remote: ssh's -F FILE instead of ~/.ssh/config")
    p.add_argument("--install", nargs="?", const="", default=None, metavar="WHEEL",
                   help="with --remote: push this edgellm (a wheel built from its source here, or WHEEL) into "
                        "the far side's ~/.cache/edgellm/remote and run that; numpy and llama-cpp-python must "
                        "be there already")


def remote_of(args, say=lambda s: None):
    """The --remote machine, ready to run edgellm (after --install, if given)."""
    from pathlib import Path

    from edgellm.remote import Remote, local_wheel, reach

    import shutil

    remote = Remote.parse(args.remote, args.remote_python, args.ssh_config)
    built = args.install == ""
    wheel = local_wheel(say) if built else (None if args.install is None else Path(args.install))
    try:
        return reach(remote, wheel, say)
    finally:
        if built:
            shutil.rmtree(wheel.parent, ignore_errors=True)
