"""A distillation's work folder is data we wrote, or it is refused (issue 24, class 1).

``--resume`` reads a folder beside the output, where anyone who can write there can plant files.
Nothing in it is unpickled; a folder without our marker is neither used nor deleted; a state file
changed after it was written fails its recorded sha256.
"""

import json
import os
import pickle

import pytest

from edgellm.errors import BadInput
from edgellm.exporters.distill import checkpoint
from edgellm.exporters.distill.student import StudentRequest, distill_student, work_dir
from edgellm.exporters.distill.train import DistillConfig

CFG = DistillConfig(steps=4, batch=2, seq=64, checkpoint_every=2)


@pytest.fixture(scope="module")
def teacher():
    from edgellm.exporters.reference_model import reference_model
    return reference_model("small")


class Exploit:
    def __reduce__(self):
        return (os.system, ("touch /tmp/edgellm-pwned-$PPID",))


def _plant_dcp(folder, witness):
    """What torch's distributed checkpoint would leave: a pickled ``.metadata``, here a payload."""
    class Payload:
        def __reduce__(self):
            return (open, (str(witness), "w"))
    for name in ("checkpoint", "checkpoint.old"):
        (folder / name).mkdir(parents=True, exist_ok=True)
        (folder / name / ".metadata").write_bytes(pickle.dumps(Payload()))
        (folder / name / "meta.json").write_text(json.dumps({"step": 2, "losses": [1.0, 1.0], "settings": {}}))


def test_a_planted_work_folder_is_refused_never_unpickled_never_deleted(run_cli, teacher, tmp_path):
    out, witness = tmp_path / "s", tmp_path / "ran-code"
    work = work_dir(out)
    _plant_dcp(work, witness)
    for resume in (["--resume"], []):
        r = run_cli("distill", str(teacher), "--layers", "2", "--steps", "4", "--batch", "2", "--seq", "64",
                    "-o", str(out), *resume)
        assert r.returncode == 2, r.stderr
        assert "not an edgellm distillation work folder" in r.stderr and len(r.stderr.strip().splitlines()) == 1
        assert not witness.exists() and (work / "checkpoint" / ".metadata").is_file() and not out.exists()


def test_a_link_or_a_foreign_owner_is_not_ours(tmp_path):
    real = tmp_path / "real"
    checkpoint.prepare(real, resume=False)
    assert (real / checkpoint.MARKER).is_file() and (real.stat().st_mode & 0o777) == 0o700
    link = tmp_path / "link"
    link.symlink_to(real)
    with pytest.raises(BadInput, match="not an edgellm distillation work folder"):
        checkpoint.prepare(link, resume=True)
    assert real.is_dir()                                # refused, nothing deleted


def _stopped_run(teacher, out):
    req = StudentRequest(teacher, out, CFG, layers=2)
    with pytest.raises(Exception, match="--resume continues"):
        distill_student(req, stop_after=2)
    return work_dir(out) / "checkpoint"


def test_a_changed_state_file_fails_its_digest(teacher, tmp_path):
    at = _stopped_run(teacher, tmp_path / "s")
    assert sorted(p.name for p in at.iterdir()) == ["meta.json", "state.safetensors"]   # data only
    data = bytearray((at / "state.safetensors").read_bytes())
    data[-1] ^= 1
    (at / "state.safetensors").write_bytes(bytes(data))
    with pytest.raises(BadInput, match="sha256"):
        distill_student(StudentRequest(teacher, tmp_path / "s", CFG, layers=2, resume=True))


@pytest.mark.parametrize("change", [
    {"step": "2"}, {"step": -1}, {"losses": [float("nan")] * 2}, {"losses": [1.0]}, {"generator": "!!"},
    {"optim": {"scalars": [], "param_groups": []}}, {"state_sha256": None},
])
def test_malformed_meta_fields_are_named(teacher, tmp_path, change):
    at = _stopped_run(teacher, tmp_path / "s")
    meta = json.loads((at / "meta.json").read_text())
    meta.update(change)
    (at / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(BadInput) as e:
        distill_student(StudentRequest(teacher, tmp_path / "s", CFG, layers=2, resume=True))
    assert "meta.json" in str(e.value) or "sha256" in str(e.value)


def test_meta_json_as_a_fifo_or_huge_is_refused_without_reading(teacher, tmp_path):
    at = _stopped_run(teacher, tmp_path / "s")
    (at / "meta.json").unlink()
    os.mkfifo(at / "meta.json")
    with pytest.raises(BadInput, match="not a regular file"):
        distill_student(StudentRequest(teacher, tmp_path / "s", CFG, layers=2, resume=True))
    (at / "meta.json").unlink()
    with open(at / "meta.json", "wb") as f:
        f.truncate(1 << 30)
    with pytest.raises(BadInput, match="more than"):
        distill_student(StudentRequest(teacher, tmp_path / "s", CFG, layers=2, resume=True))


def test_no_torch_load_or_pickle_in_the_product():
    """Every path that reads a stranger's tensors goes through safetensors; the one torch.load
    (``--allow-pickle``) passes weights_only=True."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    hits = []
    for d in ("edgellm", "exporters", "runtime"):
        for p in (root / d).rglob("*.py"):
            text = p.read_text()
            for m in re.finditer(r"torch\.load\([^)]*\)|pickle\.loads?\(|dcp\.load\(|numpy\.load\([^)]*allow_pickle=True", text):
                if "weights_only=True" not in m.group(0):
                    hits.append(f"{p.relative_to(root)}: {m.group(0)}")
    assert hits == []
