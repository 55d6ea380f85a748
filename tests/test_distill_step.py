"""The parts of a distillation step that make it fast on a GPU, checked on the CPU: the head
applied a chunk at a time gives the full-logits loss and gradients, the FP8 teacher measures
its own distance and can be undone, checkpoints come at a time-based interval, and a checkpoint
written in the background is the one written in the foreground."""

import json

import pytest
import torch
import torch.nn.functional as F


def _tiny(arch="llama", **kw):
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    shape = dict(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, max_position_embeddings=128, tie_word_embeddings=False)
    cfg = AutoConfig.for_model(arch, **{**shape, **kw})
    return AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)


def _full_kl(student, x, t_logits, temperature, hidden=None, keep=None, weight=0.0):
    """The loss as the loop computed it before: full logits, KL over the vocabulary."""
    out = student(input_ids=x, output_hidden_states=True)
    s = F.log_softmax(out.logits.float() / temperature, -1)
    t = F.log_softmax(t_logits.float() / temperature, -1)
    loss = (t.exp() * (t - s)).sum(-1).mean() * temperature ** 2
    if weight:
        loss = loss + weight * F.mse_loss(out.hidden_states[-1], hidden.index_select(-1, keep))
    return loss


@pytest.mark.parametrize("arch,temperature,weight", [("llama", 1.0, 0.0), ("llama", 2.0, 0.5), ("gemma2", 1.0, 0.0)])
def test_the_chunked_head_gives_the_full_logits_loss_and_gradients(arch, temperature, weight):
    from edgellm.exporters.distill.loss import Distilled, Teacher

    extra = {"final_logit_softcapping": 30.0, "head_dim": 16} if arch == "gemma2" else {}
    student = _tiny(arch, **extra)
    x = torch.randint(0, 300, (3, 23))                      # 69 tokens: chunks of 16 leave a ragged last one
    t_logits = torch.randn(3, 23, 300) * 3
    hidden, keep = torch.randn(3, 23, 128), torch.arange(0, 128, 2)     # a teacher's wider hidden state
    want = _full_kl(student, x, t_logits, temperature, hidden, keep, weight)
    want.backward()
    grads = {n: p.grad.clone() for n, p in student.named_parameters()}
    student.zero_grad()
    got = Distilled(student, temperature, chunk=16)(x, Teacher(hidden, logits=t_logits), keep, weight)
    got.backward()
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-6), (float(got), float(want))
    for n, p in student.named_parameters():
        assert torch.allclose(p.grad, grads[n], rtol=1e-4, atol=1e-7), n


@pytest.mark.parametrize("arch,tied", [("llama", False), ("llama", True), ("gemma2", False), ("bias", False)])
def test_the_teachers_logits_made_a_chunk_at_a_time_give_its_whole_logits_loss(arch, tied):
    """One process: the teacher hands over its final hidden states and its head, not its logits
    (soft-capped for Gemma 2); loss and gradients are those of the teacher's own logits."""
    from edgellm.exporters.distill.loss import Distilled, run_teacher

    extra = {"final_logit_softcapping": 30.0, "head_dim": 16} if arch == "gemma2" else {}
    bias, arch = arch == "bias", "llama" if arch == "bias" else arch
    teacher = _tiny(arch, hidden_size=128, intermediate_size=256, **extra).eval()
    student = _tiny(arch, tie_word_embeddings=tied, **extra)
    if bias:                                                # heads with a bias, both models
        for m in (teacher, student):
            old = m.lm_head
            m.lm_head = torch.nn.Linear(old.in_features, old.out_features, bias=True)
            with torch.no_grad():
                m.lm_head.weight.copy_(old.weight)
                m.lm_head.bias.normal_()
    x = torch.randint(0, 300, (2, 37))
    with torch.no_grad():
        t_logits = teacher(input_ids=x).logits * 4          # (sharper, so the loss is not near zero)
    teacher.get_output_embeddings().weight.data *= 4
    if teacher.get_output_embeddings().bias is not None:
        teacher.get_output_embeddings().bias.data *= 4
    if arch == "gemma2":
        teacher.config.final_logit_softcapping = 120.0      # tanh(4z / 120) * 120 = 4 (tanh(z / 30) * 30)
    want = _full_kl(student, x, t_logits, 1.0)
    want.backward()
    grads = {n: p.grad.clone() for n, p in student.named_parameters()}
    student.zero_grad()
    ref = run_teacher(teacher, x)
    assert ref.logits is None and ref.hidden.shape == (2, 37, 128)
    got = Distilled(student, 1.0, chunk=32)(x, ref)
    got.backward()
    assert float(got.detach()) > 0.1
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-6), (float(got), float(want))
    for n, p in student.named_parameters():
        assert torch.allclose(p.grad, grads[n], rtol=1e-4, atol=1e-7), n


def test_under_autocast_the_products_are_bfloat16_as_autocast_makes_them():
    """On a GPU the loss runs under bfloat16 autocast: the fused loss casts as autocast would (its
    value and gradients agree with autocast's own full-logits loss to bfloat16 rounding)."""
    from edgellm.exporters.distill.loss import Distilled, run_teacher

    teacher, student = _tiny(hidden_size=128, intermediate_size=256).eval(), _tiny()
    x = torch.randint(0, 300, (2, 29))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with torch.no_grad():
            t_logits = teacher(input_ids=x).logits
        want = _full_kl(student, x, t_logits, 1.0)
        want.backward()
        grads = {n: p.grad.clone() for n, p in student.named_parameters()}
        student.zero_grad()
        net = Distilled(student, 1.0, chunk=16)
        seen = []
        kl = net.kl
        net.kl = lambda h, w, *rest: seen.append((h.dtype, w.dtype)) or kl(h, w, *rest)
        got = net(x, run_teacher(teacher, x))
    got.backward()
    assert seen and set(seen) == {(torch.bfloat16, torch.bfloat16)}      # the products in autocast's dtype
    assert got.dtype == torch.float32 and abs(float(got.detach()) - float(want.detach())) < 2e-2 * float(want.detach())
    for n, p in student.named_parameters():
        assert p.grad.dtype == torch.float32
        cos = F.cosine_similarity(p.grad.flatten(), grads[n].flatten(), dim=0)
        assert cos > 0.99, (n, float(cos))


def test_the_fp8_teacher_measures_its_distance_and_is_undone_or_kept():
    from edgellm.exporters.distill import fp8

    teacher = _tiny().eval()
    x = torch.randint(0, 300, (2, 32))
    with torch.no_grad():
        before = teacher(input_ids=x).logits
    swapped = fp8.convert(teacher)
    assert len(swapped) == 2 * 7                           # q, k, v, o, gate, up, down in each layer
    kld = fp8.measured_kld(teacher, [x])
    assert 0 < kld < fp8.MAX_KLD                           # e4m3 with row scales: close, not equal
    fp8.undo(teacher)
    with torch.no_grad():
        assert torch.equal(teacher(input_ids=x).logits, before)
    fp8.convert(teacher)
    fp8.commit(teacher)
    kept = [f for _, _, f in fp8._swapped(teacher)]
    assert len(kept) == 14 and all(f.original is None for f in kept)
    with torch.no_grad():
        after = F.log_softmax(teacher(input_ids=x).logits.float(), -1)
    ref = F.log_softmax(before, -1)
    assert float((ref.exp() * (ref - after)).sum(-1).mean()) < fp8.MAX_KLD


def test_fp8_and_compile_choices_on_a_cpu():
    from edgellm.errors import BadInput
    from edgellm.exporters.distill.ranks import Ranks
    from edgellm.exporters.distill.teacher import check, prepare

    ranks = Ranks(device="cpu")
    with pytest.raises(BadInput, match="needs one process on a GPU that multiplies FP8"):
        check("fp8", ranks)
    with pytest.raises(BadInput, match="choose one of"):
        check("int4", ranks)
    teacher = _tiny().to(torch.bfloat16)
    assert prepare(teacher, "auto", ranks, []) == {"teacher_precision": "fp32"}
    assert next(teacher.parameters()).dtype == torch.float32
    assert prepare(teacher, "bf16", ranks, []) == {"teacher_precision": "bf16"}
    assert next(teacher.parameters()).dtype == torch.bfloat16


def test_checkpoints_come_every_ten_minutes_of_training_by_default(monkeypatch, tmp_path):
    from edgellm.exporters.distill import train as T
    from edgellm.exporters.distill.ranks import Ranks

    assert T._every(0.25, Ranks(device="cpu")) == 2400 and T._every(1e3, Ranks(device="cpu")) == 1
    saved = []
    monkeypatch.setattr(T, "CHECKPOINT_S", 0.0)           # a step takes longer than that: every step
    monkeypatch.setattr("edgellm.exporters.distill.checkpoint.Writer.save",
                        lambda self, student, opt, meta, gen: saved.append(meta["step"]))
    import numpy as np

    ids = np.random.default_rng(0).integers(0, 300, 4000)
    cfg = T.DistillConfig(steps=8, batch=2, seq=32)
    assert T.WARMUP_STEPS + T.TIMED_STEPS < 7
    assert cfg.checkpoint_every is None
    T.train(_tiny(), _tiny(), ids, cfg, tmp_path)
    # timed on the steady steps after the warm-up (decided as the last of them ends), then each one
    assert saved == list(range(T.WARMUP_STEPS + T.TIMED_STEPS + 1, 9))
    saved.clear()
    monkeypatch.setattr(T, "CHECKPOINT_S", 600.0)
    T.train(_tiny(), _tiny(), ids, cfg, tmp_path)
    assert saved == [8]                                    # a short run: only the last


def test_a_checkpoint_written_in_the_background_is_the_one_written_in_the_foreground(tmp_path):
    import numpy as np

    from edgellm.exporters.distill import checkpoint
    from edgellm.exporters.distill.ranks import Ranks

    student = _tiny()
    opt = torch.optim.AdamW(student.parameters(), lr=1e-3)
    student(input_ids=torch.randint(0, 300, (1, 8)), labels=torch.randint(0, 300, (1, 8))).loss.backward()
    opt.step()
    gen = torch.Generator().manual_seed(3).get_state()
    ranks = Ranks(device="cpu")
    for name, background in (("fg", False), ("bg", True)):
        (tmp_path / name).mkdir()
        w = checkpoint.Writer(tmp_path / name, ranks, background=background)
        w.save(student, opt, {"settings": {}, "step": 1, "losses": [1.0]}, gen)
        if background:                         # training goes on while it writes: the copy is of step 1
            with torch.no_grad():
                for p in student.parameters():
                    p.add_(1.0)
        w.close()
        if background:
            with torch.no_grad():
                for p in student.parameters():
                    p.sub_(1.0)
    a, b = (tmp_path / n / checkpoint.NAME for n in ("fg", "bg"))
    assert (a / checkpoint.STATE).read_bytes() == (b / checkpoint.STATE).read_bytes()
    assert json.loads((a / checkpoint.META).read_text()) == json.loads((b / checkpoint.META).read_text())
    from safetensors.numpy import load_file                 # our own writer's file is a safetensors file
    assert all(np.isfinite(v).all() for v in load_file(a / checkpoint.STATE).values())


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="the copies off a GPU run on a stream of their own (run on the GPU queue)"))])
def test_a_background_checkpoint_holds_the_state_of_its_step_while_training_goes_on(tmp_path, device):
    """On a GPU the copies into host memory overlap the next steps' forward and backward passes;
    the optimizer waits for them (``before_update``), so the file holds the state at its step."""
    from safetensors.torch import load_file

    from edgellm.exporters.distill import checkpoint
    from edgellm.exporters.distill.ranks import Ranks

    student = _tiny(hidden_size=256, intermediate_size=1024, num_hidden_layers=4).to(device)
    opt = torch.optim.AdamW(student.parameters(), lr=1e-2, fused=device == "cuda" or None)
    x = torch.randint(0, 300, (4, 64), device=device)

    def step():
        student(input_ids=x, labels=x).loss.backward()
        w.before_update()
        opt.step()
        opt.zero_grad(set_to_none=True)

    w = checkpoint.Writer(tmp_path, Ranks(device=device), background=True)
    w.reserve(student)
    step()
    want = {f"model/{k}": v.detach().cpu().clone() for k, v in student.state_dict().items()}
    names = {p: n for n, p in student.named_parameters()}
    want.update({f"optim/{names[p]}/{k}": v.detach().cpu().clone() for p, st in opt.state.items()
                 for k, v in st.items() if k in ("exp_avg", "exp_avg_sq")})
    if device == "cuda":                    # the copies' stream held back: the next steps run
        with torch.cuda.stream(w.buffers.stream(torch.device("cuda", torch.cuda.current_device()))):
            torch.cuda._sleep(200_000_000)  # long before the copies would, unless made to wait
    w.save(student, opt, {"settings": {}, "step": 1, "losses": [1.0]}, torch.Generator().get_state())
    for _ in range(3):
        step()
    w.close()
    got = load_file(tmp_path / checkpoint.NAME / checkpoint.STATE)
    assert sum(k.startswith("optim/") for k in want) == 2 * len(names)
    assert all(torch.equal(got[k], v) for k, v in want.items())
    assert not torch.equal(got["model/lm_head.weight"], student.lm_head.weight.detach().cpu())   # it moved on


def test_a_failed_background_write_is_raised_by_the_next_wait(tmp_path, monkeypatch):
    from edgellm.exporters.distill import checkpoint
    from edgellm.exporters.distill.ranks import Ranks

    student = _tiny()
    opt = torch.optim.AdamW(student.parameters())
    w = checkpoint.Writer(tmp_path, Ranks(device="cpu"), background=True)

    def broken(path, tensors):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoint, "_write_state", broken)
    w.save(student, opt, {"settings": {}, "step": 1, "losses": []}, torch.Generator().get_state())
    with pytest.raises(OSError, match="No space left"):
        w.close()
    assert not (tmp_path / checkpoint.NAME).exists()


def test_compiled_layers_compile_once_per_shape_not_once_per_layer(monkeypatch, tmp_path):
    """The decoder layers are compiled one by one but share a graph per shape.  A forward that
    builds a key/value cache (transformers' default) guards each layer on its own cache entry:
    one recompilation per layer until torch gives up and runs them eagerly, which made the first
    GPU measurement a third of the speed it should have been."""
    import numpy as np

    from edgellm.exporters.distill import teacher as teacher_mod
    from edgellm.exporters.distill import train as T

    graphs = []

    def counting(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    monkeypatch.setattr(teacher_mod, "BACKEND", counting)
    torch._dynamo.reset()
    layers = 6
    student, teacher = _tiny(num_hidden_layers=layers), _tiny(num_hidden_layers=layers, hidden_size=128)
    ids = np.random.default_rng(0).integers(0, 300, 4000)
    T.train(student, teacher, ids, T.DistillConfig(steps=3, batch=2, seq=32, compile=True), tmp_path)
    torch._dynamo.reset()
    assert 2 <= len(graphs) <= 4, len(graphs)        # each model's layer shape, the loss chunk


def test_checkpoint_host_memory_is_one_exact_arena_reused_at_every_checkpoint(tmp_path):
    from edgellm.exporters.distill import checkpoint
    from edgellm.exporters.distill.ranks import Ranks

    student = _tiny()
    w = checkpoint.Writer(tmp_path, Ranks(device="cpu"), background=True)
    w.reserve(student)
    params = sum(p.numel() * 4 for p in student.parameters())
    arena = w.buffers.arena
    assert 3 * params <= arena.numel() < 3 * params + (1 << 20)         # no power-of-two rounding
    views = [w.buffers.get(k, t) for k, t in student.state_dict().items()]
    again = [w.buffers.get(k, t) for k, t in student.state_dict().items()]
    assert all(a.data_ptr() == b.data_ptr() for a, b in zip(views, again))
    base, end = arena.data_ptr(), arena.data_ptr() + arena.numel()
    assert all(base <= v.data_ptr() and v.data_ptr() + v.numel() * v.element_size() <= end for v in views)
    assert all(v.data_ptr() % 64 == 0 for v in views)
    big = w.buffers.get("too big", torch.zeros(4 * params // 4))      # past the arena: memory of its own
    assert not base <= big.data_ptr() < end
    w.close()
    assert w.buffers.arena is None


@pytest.mark.parametrize("scale", [0.01, 100.0])     # gradients under and over the clipping norm
def test_a_fused_adamw_clips_through_its_grad_scale_as_clip_grad_norm_then_step_does(scale):
    """The fused optimizer's clip (its grad_scale) moves the weights as clip_grad_norm_ and a plain
    step do, and the optimizer is left without a scale for anyone stepping it later."""
    from edgellm.exporters.distill.train import _clipped_step

    def run(fused_clip: bool):
        torch.manual_seed(0)
        m = torch.nn.Sequential(torch.nn.Linear(32, 32), torch.nn.Linear(32, 8))
        opt = torch.optim.AdamW(m.parameters(), lr=1e-2, fused=True)
        for _ in range(3):
            m(torch.randn(16, 32) * scale).pow(2).sum().backward()
            if fused_clip:
                _clipped_step(opt, 1.0)
            else:
                torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0)
                opt.step()
            opt.zero_grad(set_to_none=True)
        assert getattr(opt, "grad_scale", None) is None
        return torch.cat([p.detach().flatten() for p in m.parameters()])

    torch.testing.assert_close(run(True), run(False), rtol=0, atol=1e-6)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="the float32-output product is CUDA's"))])
def test_the_heads_gradient_accumulates_as_float32_sums_of_the_chunks_products(device):
    """``accumulate`` adds a bfloat16 product into a float32 sum (inside the product where the
    device has it, on a GPU: which is then checked to be taken), within bfloat16 rounding of the
    float32 product's sum."""
    from edgellm.exporters.distill import loss

    gen = torch.Generator().manual_seed(1)
    out = torch.randn(128, 64, generator=gen).to(device)
    start = out.clone()
    parts = [(torch.randn(128, 32, generator=gen).to(device).bfloat16(),
              torch.randn(32, 64, generator=gen).to(device).bfloat16()) for _ in range(4)]
    for a, b in parts:
        loss.accumulate(out, a, b)
    want = start + sum(a.float() @ b.float() for a, b in parts)
    torch.testing.assert_close(out, want, rtol=2e-2, atol=5e-2)
    assert out.dtype == torch.float32
    if device == "cuda":
        assert loss._fp32_addmm(str(out.device))


def test_frozen_heap_hands_the_objects_back():
    # in a fresh interpreter: torch's compile workers may have frozen this one's heap already
    import subprocess
    import sys

    script = """
import gc
from edgellm.exporters.distill.train import _frozen_heap
assert gc.get_freeze_count() == 0
with _frozen_heap():
    assert gc.get_freeze_count() > 0
assert gc.get_freeze_count() == 0
gc.freeze()                                  # someone else froze objects: theirs stay frozen
with _frozen_heap():
    pass
assert gc.get_freeze_count() > 0
print("ok")
"""
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr
