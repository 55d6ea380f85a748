import errno
import os

import pytest

from edgellm.errors import EdgeLLMError
from edgellm.core.files import atomic_write


def test_writes_and_replaces(tmp_path):
    path = tmp_path / "sub" / "out.toml"
    atomic_write(path, b"one")
    atomic_write(path, b"two")
    assert path.read_bytes() == b"two"
    assert os.listdir(path.parent) == ["out.toml"]
    mask = os.umask(0o022)
    os.umask(mask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~mask


@pytest.mark.parametrize("failure", [KeyboardInterrupt(), OSError(errno.ENOSPC, "No space left on device")])
def test_interruption_or_full_disk_leaves_nothing(tmp_path, monkeypatch, failure):
    path = tmp_path / "out.toml"

    def fail(fd):
        raise failure
    monkeypatch.setattr(os, "fsync", fail)
    with pytest.raises((KeyboardInterrupt, EdgeLLMError)) as e:
        atomic_write(path, b"x" * 1000)
    if isinstance(failure, OSError):
        assert "No space left on device" in e.value.message
    assert os.listdir(tmp_path) == []


def test_previous_file_survives_a_failed_rewrite(tmp_path, monkeypatch):
    path = tmp_path / "out.toml"
    atomic_write(path, b"good")
    monkeypatch.setattr(os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(errno.EIO, "I/O error")))
    with pytest.raises(EdgeLLMError):
        atomic_write(path, b"bad")
    assert path.read_bytes() == b"good"
