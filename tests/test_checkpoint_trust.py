"""A distillation's work folder is data we wrote, or it is refused (issue 24, class 1).

``--resume`` reads a folder beside the output, where anyone who can write there can plant files.
Nothing in it is unpickled; a folder without our marker is neither used nor deleted; a state file
changed after it was written fails its recorded sha256.  The module is tested on a small model
and optimizer directly; one case runs the command as a user would.
"""

import json
import os
import pickle

import pytest

from edgellm.errors import BadInput
from edgellm.exporters.distill import checkpoint
from edgellm.exporters.distill.ranks import Ranks


@pytest.fixture(scope="module")
def teacher():
    from edgellm.exporters.reference_model import reference_model
    return reference_model("small")


def _model_and_opt(seed: int = 0):
    import torch

    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Embedding(16, 8), torch.nn.Linear(8, 16))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model(torch.tensor([[1, 2, 3]])).sum().backward()
    opt.step()
    return model, opt


SETTINGS = {"steps": 4, "seed": 0}


@pytest.fixture
def saved(tmp_path):
    """A work folder with one checkpoint of a trained step, as ``distill`` leaves it."""
    import torch

    work = tmp_path / ".s.distill-work"
    checkpoint.prepare(work, resume=False)
    model, opt = _model_and_opt()
    gen = torch.Generator().manual_seed(0)
    checkpoint.save(work, model, opt, {"settings": SETTINGS, "step": 2, "losses": [1.0, 0.5]}, gen.get_state(),
                    Ranks())
    return work, model, opt


def test_a_checkpoint_round_trips_as_data_only(saved):
    import torch

    work, model, opt = saved
    at = work / "checkpoint"
    assert sorted(p.name for p in at.iterdir()) == ["meta.json", "state.safetensors"]
    fresh, fresh_opt = _model_and_opt(seed=1)
    meta, gen = checkpoint.load(work, fresh, fresh_opt, SETTINGS, Ranks())
    assert meta["step"] == 2 and meta["losses"] == [1.0, 0.5] and gen.dtype == torch.uint8
    for a, b in zip(model.state_dict().values(), fresh.state_dict().values()):
        assert torch.equal(a, b)
    assert torch.equal(opt.state_dict()["state"][0]["exp_avg"], fresh_opt.state_dict()["state"][0]["exp_avg"])


def test_a_planted_work_folder_is_refused_never_unpickled_never_deleted(cli, teacher, tmp_path):
    """In this process (an unpickled payload would write the witness here as well)."""
    out, witness = tmp_path / "s", tmp_path / "ran-code"

    class Payload:
        def __reduce__(self):
            return (open, (str(witness), "w"))

    work = out.with_name(f".{out.name}.distill-work")
    (work / "checkpoint").mkdir(parents=True)
    (work / "checkpoint" / ".metadata").write_bytes(pickle.dumps(Payload()))     # what DCP would read
    (work / "checkpoint" / "meta.json").write_text(json.dumps({"step": 2, "losses": [1.0, 1.0], "settings": {}}))
    for resume in (["--resume"], []):
        r = cli("distill", str(teacher), "--layers", "2", "--steps", "4", "--batch", "2", "--seq", "64",
                    "-o", str(out), *resume)
        assert r.returncode == 2, r.stderr
        assert "not an edgellm distillation work folder" in r.stderr and len(r.stderr.strip().splitlines()) == 1
        assert not witness.exists() and (work / "checkpoint" / ".metadata").is_file() and not out.exists()


def test_a_link_or_an_unmarked_folder_is_not_ours(tmp_path):
    real = tmp_path / "real"
    checkpoint.prepare(real, resume=False)
    assert (real / checkpoint.MARKER).is_file() and (real.stat().st_mode & 0o777) == 0o700
    link = tmp_path / "link"
    link.symlink_to(real)
    with pytest.raises(BadInput, match="not an edgellm distillation work folder"):
        checkpoint.prepare(link, resume=True)
    other = tmp_path / "documents"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(BadInput, match="neither uses nor deletes it"):
        checkpoint.prepare(other, resume=False)
    assert real.is_dir() and (other / "notes.txt").is_file()             # refused, nothing deleted


def test_a_changed_state_file_fails_its_digest(saved):
    work, _, _ = saved
    state = work / "checkpoint" / "state.safetensors"
    data = bytearray(state.read_bytes())
    data[-1] ^= 1
    state.write_bytes(bytes(data))
    with pytest.raises(BadInput, match="sha256"):
        checkpoint.load(work, *_model_and_opt(), SETTINGS, Ranks())


@pytest.mark.parametrize("change", [
    {"step": "2"}, {"step": -1}, {"losses": [float("nan")] * 2}, {"losses": [1.0]}, {"generator": "!!"},
    {"optim": {"scalars": [], "param_groups": []}}, {"state_sha256": None}, {"settings": {"steps": 5}},
])
def test_malformed_meta_fields_are_named(saved, change):
    work, _, _ = saved
    meta_path = work / "checkpoint" / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta.update(change)
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(BadInput) as e:
        checkpoint.load(work, *_model_and_opt(), SETTINGS, Ranks())
    assert "meta.json" in str(e.value) or "sha256" in str(e.value) or "other settings" in str(e.value)


def test_meta_json_as_a_fifo_or_huge_is_refused_without_reading(saved):
    work, _, _ = saved
    meta = work / "checkpoint" / "meta.json"
    meta.unlink()
    os.mkfifo(meta)
    with pytest.raises(BadInput, match="not a regular file"):
        checkpoint.load(work, *_model_and_opt(), SETTINGS, Ranks())
    meta.unlink()
    with open(meta, "wb") as f:
        f.truncate(1 << 30)
    with pytest.raises(BadInput, match="more than"):
        checkpoint.load(work, *_model_and_opt(), SETTINGS, Ranks())


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
