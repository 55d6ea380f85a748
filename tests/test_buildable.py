"""The planner offers only what edgellm can build: every bundled example config x every format,
on a CPU board and on a phone with an NPU; each build offered is exported (without verification:
the other tests verify) from a tiny random model of that family, and each one refused is refused
by the planner with the reason, not by the exporter later."""

import json

import pytest

from edgellm import devices, models
from edgellm.errors import BadInput
from edgellm.pipeline import writer_for
from edgellm.plan import planner

DEVICES = ("rpi5-8gb", "android-sd8gen3-12gb")
TINY = {"gemma3_text": "gemma3_text", "gemma3": "gemma3_text"}


def offered() -> dict[tuple[str, tuple], object]:
    """(model_type, build key) -> a choice offered for some bundled config on some device."""
    out = {}
    for hub_id in models.bundled_ids():
        model = models.load_config(hub_id)
        for name in DEVICES:
            device = devices.find(name)
            budgets = planner.budgets_for(device, None, None, 512, model)
            for fmt in ("gguf", "onnx"):
                try:
                    p = planner.plan(model, device, budgets, formats=(fmt,), advise=False)
                except BadInput as e:                  # the family has no build of this format
                    assert "does not support" in str(e) or "not supported" in str(e), e
                    continue
                for c in p.candidates:
                    out.setdefault((model.model_type, c.choice.key), c.choice)
    return out


OFFERED = offered()


def test_nothing_is_offered_that_the_family_does_not_build():
    from edgellm.models.families import REGISTRY
    from edgellm.formats import format_for

    assert OFFERED
    for (model_type, _), c in OFFERED.items():
        assert format_for(c).key in REGISTRY[model_type].supports, (model_type, c.label)
    assert {c.format for (t, _), c in OFFERED.items() if t == "gpt2"} == {"gguf", "onnx"}
    assert not any(c.target == "npu-static" for (t, _), c in OFFERED.items() if t in ("gemma2", "qwen3", "gpt2"))


def test_plan_refuses_a_build_the_config_rules_out_in_one_line(run_cli, model_dir):
    cfg = json.loads(open(models.locate("meta-llama/Llama-3.2-1B-Instruct").path).read())
    cfg["rope_scaling"] = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 8192}
    r = run_cli("plan", str(model_dir(cfg)), "--device", "rpi5", "--format", "onnx")
    assert r.returncode == 2 and "rope scaling 'yarn' is not supported by ONNX export" in r.stderr
    assert r.stderr.count("\n") == 1


def test_advice_proposes_students_only_for_families_distill_takes(run_cli):
    for hub_id, distils in (("google/gemma-2-2b-it", False), ("microsoft/Phi-3-mini-4k-instruct", True)):
        r = run_cli("plan", hub_id, "--device", "rpi4-4gb", "--max-memory", "1GB", "--json")
        assert r.returncode == 3, r.stderr
        suggestions = " ".join(json.loads(r.stdout)["suggestions"])
        assert ("distilled student" in suggestions) == distils, suggestions


@pytest.mark.parametrize("model_type,key", sorted(OFFERED, key=str), ids=lambda v: str(v) if isinstance(v, str)
                         else "-".join(str(x) for x in v if x not in (None, False)))
def test_every_offered_build_exports(tiny, tmp_path, model_type, key):
    from edgellm.exporters.stages import ExportRequest, run_export

    choice = OFFERED[(model_type, key)]
    folder = tiny(TINY.get(model_type, model_type))
    model = models.load_config(str(folder))
    result = run_export(writer_for(choice), ExportRequest(model_dir=folder, model=model, choice=choice,
                                                          out=tmp_path / "b", device="test",
                                                          prediction={"context": 256}, verify=False, threads=2))
    assert result.file_bytes > 0 and (tmp_path / "b" / "manifest.json").is_file()
