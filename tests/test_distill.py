"""`edgellm distill` and `export --allow-distill`, as a user runs them, and their bad input."""

import json
import shutil

import pytest

FAST = ("--steps", "40", "--batch", "4", "--seq", "64", "--checkpoint-every", "20")


@pytest.fixture(scope="session")
def teacher():
    from edgellm.exporters.reference_model import reference_model
    return reference_model("small")


def test_a_pruned_student_learns_and_beats_an_untrained_one(cli, run_cli, teacher, tmp_path):
    r = run_cli("distill", str(teacher), "--size", "0.25", *FAST, "-o", str(tmp_path / "s"), "--json", timeout=900)
    assert r.returncode == 0, r.stderr
    card = json.loads(r.stdout)
    m = card["metrics"]
    assert m["final_loss"] < m["first_loss"]
    assert 0.2 < card["student"]["share_of_teacher_non_embedding"] < 0.3
    assert json.loads((tmp_path / "s" / "edgellm-distill.json").read_text())["teacher"] == str(teacher)

    from transformers import AutoConfig, AutoModelForCausalLM
    import torch
    torch.manual_seed(0)
    untrained = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(tmp_path / "s"))
    untrained.save_pretrained(tmp_path / "u")
    for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja"):
        if (tmp_path / "s" / f).is_file():                 # transformers 5 writes no special_tokens_map
            shutil.copy(tmp_path / "s" / f, tmp_path / "u" / f)
    scores = {}
    for name in ("s", "u"):                      # scored in this process: the distillation ran as a user runs it
        e = cli("eval", str(tmp_path / name), "--context", "64", "--windows", "8", "--json")
        assert e.returncode == 0, e.stderr
        scores[name] = json.loads(e.stdout)["perplexity"]
    assert scores["s"] < 0.5 * scores["u"]
    x = cli("export", str(tmp_path / "s"), "--device", "rpi5", "--quant", "Q8_0", "-o", str(tmp_path / "b"))
    assert x.returncode == 0, x.stderr


def test_resume_after_an_interruption_ends_where_an_uninterrupted_run_does(teacher, tmp_path):
    from edgellm.errors import EdgeLLMError
    from edgellm.exporters.distill.train import DistillConfig
    from edgellm.exporters.distill.student import StudentRequest, distill_student, work_dir

    cfg = DistillConfig(steps=12, batch=2, seq=64, checkpoint_every=4)
    whole = distill_student(StudentRequest(teacher, tmp_path / "whole", cfg, layers=2))
    req = StudentRequest(teacher, tmp_path / "split", cfg, layers=2)
    with pytest.raises(EdgeLLMError, match="--resume continues"):
        distill_student(req, stop_after=6)
    assert (work_dir(req.out) / "checkpoint" / "meta.json").is_file() and not req.out.exists()
    resumed = distill_student(StudentRequest(teacher, tmp_path / "split", cfg, layers=2, resume=True))
    assert resumed.record["metrics"]["final_loss"] == whole.record["metrics"]["final_loss"]
    assert (tmp_path / "split" / "model.safetensors").read_bytes() == (tmp_path / "whole" / "model.safetensors").read_bytes()
    assert not work_dir(req.out).exists()


def test_running_out_of_memory_mid_run_is_one_line_and_the_checkpoint_resumes(teacher, tmp_path, monkeypatch):
    """A GPU (or host) out-of-memory at step 7 stops the run with one line; the checkpoint of step 4
    stays, and --resume from it finishes (that a resumed run ends where an uninterrupted one does
    is the test above)."""
    import torch

    from edgellm.errors import EdgeLLMError
    from edgellm.exporters.distill.train import DistillConfig
    from edgellm.exporters.distill.student import StudentRequest, distill_student, work_dir

    cfg = DistillConfig(steps=8, batch=2, seq=64, checkpoint_every=4)
    clip, calls = torch.nn.utils.clip_grad_norm_, []

    def failing(*a, **kw):
        calls.append(1)
        if len(calls) == 7:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.50 GiB")
        return clip(*a, **kw)

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", failing)
    req = StudentRequest(teacher, tmp_path / "split", cfg, layers=2)
    with pytest.raises(EdgeLLMError, match=r"^distilling: the GPU cpu ran out of memory.*last checkpoint stays "
                                           r"usable with --resume$"):
        distill_student(req)
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", clip)
    assert json.loads((work_dir(req.out) / "checkpoint" / "meta.json").read_text())["step"] == 4
    assert not req.out.exists()
    resumed = distill_student(StudentRequest(teacher, tmp_path / "split", cfg, layers=2, resume=True))
    assert resumed.record["steps"] == 8 and (tmp_path / "split" / "model.safetensors").is_file()
    assert resumed.record["throughput"]["device"] == "cpu" and resumed.record["throughput"]["tokens_per_s"] > 0


def test_bad_input_fails_before_any_training(cli, teacher, tiny, tmp_path):
    short = tmp_path / "short.txt"
    short.write_text("x = 1\n")
    no_tok = tmp_path / "no-tokenizer"
    no_tok.mkdir()
    for f in ("config.json", "model.safetensors"):
        shutil.copy(teacher / f, no_tok / f)
    cases = [((str(teacher), "--size", "0.25", "--data", str(short)), "too short for one batch"),
             ((str(teacher), "--layers", "9"), "cannot be deeper"),
             ((str(teacher), "--params", "1000"), "no student of"),
             ((str(teacher), "--size", "1.5"), "between 0 and 1"),
             ((str(no_tok), "--size", "0.25"), "no tokenizer"),
             ((str(tiny("gpt2")), "--size", "0.25"), "distillation does not support 'gpt2'"),
             ((str(teacher), "--size", "0.25", "--device", "cuda"), "no CUDA device"),
             ((str(teacher), "--size", "0.25", "--gpus", "2"), "--processes 2 runs the same on the CPU"),
             ((str(teacher), "--size", "0.25", "--processes", "3"), "does not split over 3 processes"),
             ((str(teacher), "--size", "0.25", "--teacher-precision", "fp8"), "needs one process on a GPU"),
             ((str(teacher),), "give the student's size")]
    for args, message in cases:          # in this process: each case is refused before any work
        r = cli("distill", *args, *FAST, "-o", str(tmp_path / "out"))
        assert r.returncode == 2, (args, r.stderr)
        assert message in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert not (tmp_path / "out").exists()


def test_export_allow_distill_builds_the_student_the_plan_proposes(cli, teacher, tmp_path):
    """In this process: a distillation as its own process is test_a_pruned_student_learns...'s."""
    budget = ("--device", "rpi5", "--min-decode-tps", "2200", "--context", "256")   # the teacher's builds are slower
    refused = cli("export", str(teacher), *budget, "-o", str(tmp_path / "b"))
    assert refused.returncode == 3 and "distilled student" in refused.stderr
    r = cli("export", str(teacher), *budget, "-o", str(tmp_path / "b"), "--allow-distill",
            "--distill-steps", "20", "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    student = tmp_path / "small-v1-student"
    card = json.loads((student / "edgellm-distill.json").read_text())
    assert card["steps"] == 20 and out["verification"]["held_out"]["mean_kld"] < 0.01
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert manifest["model"]["name"] == "small-v1-student"         # a name, never the host's path
    assert str(tmp_path) not in (tmp_path / "b" / "manifest.json").read_text()


@pytest.mark.parametrize("arch", ["phi3", "gemma"])
def test_fused_and_gemma_students_keep_the_teachers_rows_and_distil(cli, tiny, tmp_path, arch):
    """Phi-3 stacks q|k|v and gate|up in one matrix each: the student keeps the rows the separate
    projections would keep.  Then the CLI distils and the student exports like any model (in this
    process: a distillation as its own process is test_a_pruned_student_learns...'s)."""
    import numpy as np
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from edgellm.exporters.distill.prune import Importance, prune

    folder = tiny(arch)
    teacher = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    t = teacher.config
    rng = np.random.default_rng(0)
    imp = Importance(rng.random(t.num_hidden_layers), rng.random((t.num_hidden_layers, t.intermediate_size)),
                     rng.random((t.num_hidden_layers, t.num_key_value_heads)), rng.random(t.hidden_size))
    cfg = AutoConfig.from_pretrained(folder)
    cfg.num_hidden_layers, cfg.intermediate_size = 1, 256
    if arch == "gemma":                 # Phi-3 derives its head size from the width: keep it there
        cfg.hidden_size = 192
    student, keep_h, keep_layers = prune(teacher, cfg, imp)
    tl, sl = teacher.model.layers[int(keep_layers[0])], student.model.layers[0]
    ffn = torch.from_numpy(np.sort(np.argsort(-imp.mlp[keep_layers[0]], kind="stable")[:256]))
    if arch == "phi3":
        inter = t.intermediate_size
        gate, up = tl.mlp.gate_up_proj.weight[:inter], tl.mlp.gate_up_proj.weight[inter:]
        want = torch.cat([gate[ffn][:, keep_h], up[ffn][:, keep_h]])
        assert torch.equal(sl.mlp.gate_up_proj.weight, want)
        q_size = t.num_attention_heads * (t.hidden_size // t.num_attention_heads)
        assert torch.equal(sl.self_attn.qkv_proj.weight[:q_size], tl.self_attn.qkv_proj.weight[:q_size][:, keep_h])
    else:
        assert torch.equal(sl.mlp.gate_proj.weight, tl.mlp.gate_proj.weight[ffn][:, keep_h])
    if arch == "phi3":                  # llama.cpp's phi3 needs hidden = heads x head size
        r = cli("distill", str(folder), "--hidden", "192", *FAST, "-o", str(tmp_path / "x"))
        assert r.returncode == 2 and "heads x head size" in r.stderr and not (tmp_path / "x").exists()
    r = cli("distill", str(folder), "--size", "0.4", *FAST, "-o", str(tmp_path / "s"), "--json")
    assert r.returncode == 0, r.stderr
    r = cli("export", str(tmp_path / "s"), "--device", "rpi5", "--quant", "Q8_0", "-o", str(tmp_path / "b"))
    assert r.returncode == 0, r.stderr
