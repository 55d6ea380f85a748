"""Every failure ends as one printable line with the right exit code (issue 24, class 7), whatever
it derives from: pyo3's PanicException and torch's CheckpointException are BaseException only."""

import argparse
import errno

import pytest

from edgellm.cli import _dispatch
from edgellm.errors import BadInput


class PanicException(BaseException):           # what pyo3 raises when Rust code panics
    pass


@pytest.mark.parametrize("error, code", [
    (PanicException("called `Option::unwrap()` on a `None` value"), 2),
    (RecursionError("maximum recursion depth exceeded"), 2),
    (OverflowError("cannot convert float infinity to integer"), 2),
    (ZeroDivisionError("division by zero"), 2),
    (MemoryError(), 1),
    (ValueError("a bug\nwith a second line\x1b[31m"), 1),
    (BadInput("a name\nwith\x1b]0;title\x07 escapes"), 2),
    (OSError(errno.ENOSPC, "No space left on device", "/work/out\n\x1b[31mstudent"), 1),   # a full disk, said so
    (OSError(errno.EACCES, "Permission denied", "/x"), 1),
])
def test_one_line_and_the_right_code(capsys, error, code):
    def fail(args):
        raise error
    assert _dispatch(argparse.Namespace(func=fail, debug=False)) == code
    err = capsys.readouterr().err
    assert ("no space left" in err) == (getattr(error, "errno", None) == errno.ENOSPC)
    assert err.startswith("edgellm: error: ") and err.count("\n") == 1 and "\x1b" not in err and "\x07" not in err


def test_system_exit_still_passes_through():
    def leave(args):
        raise SystemExit(3)
    with pytest.raises(SystemExit):
        _dispatch(argparse.Namespace(func=leave, debug=False))
