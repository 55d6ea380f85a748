"""Where calibration and distillation run (--calib-device, distill --device): auto takes a GPU
only when torch sees one; cuda without one, a GPU or host running out of memory, and a run that
would not fit RAM, GPU memory or disk are one clear line each, before work where they can be."""

import pytest

from edgellm.errors import BadInput, EdgeLLMError
from edgellm.exporters import compute
from edgellm.exporters.calibrate import memory as calibrate_memory


def test_auto_is_the_cpu_here_and_cuda_without_a_gpu_is_refused():
    import torch

    assert not torch.cuda.is_available()                   # the CI machine: a CPU-only torch
    assert compute.resolve("auto") == "cpu" and compute.resolve("cpu") == "cpu"
    with pytest.raises(BadInput, match=r"--calib-device cuda: torch .* sees no CUDA device here"):
        compute.resolve("cuda", "--calib-device")
    with pytest.raises(BadInput, match="use auto, cpu or cuda"):
        compute.resolve("tpu")


def test_running_out_of_memory_is_one_line_naming_what_to_do():
    import torch

    with pytest.raises(EdgeLLMError, match=r"^distilling: the GPU cuda ran out of memory; use a smaller batch, "
                                           r"or the CPU; the last checkpoint stays usable"):
        with compute.gpu_memory_guard("cuda", "distilling", "; the last checkpoint stays usable"):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    with pytest.raises(EdgeLLMError, match=r"^calibrating: this machine ran out of memory \("):
        with compute.gpu_memory_guard("cpu", "calibrating"):
            raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory")
    with pytest.raises(RuntimeError, match="something else"):       # other errors pass through
        with compute.gpu_memory_guard("cpu", "calibrating"):
            raise RuntimeError("something else")


def _qwen_shape():
    from edgellm import models
    return models.load_config("Qwen/Qwen2.5-0.5B-Instruct")


def test_preflight_refuses_what_will_not_fit_naming_the_numbers(monkeypatch, tmp_path):
    import shutil
    from collections import namedtuple

    model = _qwen_shape()
    got = calibrate_memory.preflight(model, 512, 16, True, True, False, "cpu", tmp_path, "qwen")
    assert got.ram > 0 and got.disk == 4 * 25 * 16 * 512 * 896 and got.gpu == 0
    # 100 windows: every boundary only of the 16 XᵀX is gathered on (the Fisher's 4 among them)
    assert calibrate_memory.need(model, 512, 100).disk == 4 * 512 * 896 * (25 * 16 + 2 * 84)

    Usage = namedtuple("Usage", "total used free")
    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda p: Usage(10 << 20, 9 << 20, 1 << 20))
    with pytest.raises(EdgeLLMError, match=r"needs 700 MiB of temporary disk in .*; it has 1 MiB free"):
        calibrate_memory.preflight(model, 512, 16, True, True, False, "cpu", tmp_path, "qwen")
    monkeypatch.setattr(shutil, "disk_usage", real)

    monkeypatch.setattr(compute, "gpu_memory", lambda d: (256 << 20, 80 << 30))     # a busy GPU
    with pytest.raises(EdgeLLMError, match=r"GPU memory; cuda has 256 MiB free of 80 GiB \(--calib-device cpu"):
        calibrate_memory.preflight(model, 512, 16, True, True, False, "cuda", tmp_path, "qwen")
    monkeypatch.setattr(compute, "gpu_memory", lambda d: (70 << 30, 80 << 30))
    on_gpu = calibrate_memory.preflight(model, 512, 16, True, True, False, "cuda", tmp_path, "qwen")
    assert on_gpu.gpu > 0 and on_gpu.ram < got.ram                 # the layers' share moved to the GPU


def test_export_refuses_calib_device_cuda_here_before_any_work(run_cli, tiny, tmp_path):
    r = run_cli("export", str(tiny("llama")), "--device", "rpi5", "--quant", "Q4_K_M", "--calibrate",
                "--calib-device", "cuda", "-o", str(tmp_path / "b"))
    assert r.returncode == 2 and "--calib-device cuda: torch" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not (tmp_path / "b").exists()


def test_plan_calibrate_says_what_calibrating_here_needs(run_cli):
    import json

    r = run_cli("plan", "meta-llama/Llama-3.1-8B-Instruct", "--device", "laptop-x86-16gb", "--calibrate", "--max-kld", "1")
    assert r.returncode == 0, r.stderr
    assert "calibrating here (CPU, 16 windows of 512 tokens) needs about" in r.stdout
    j = json.loads(run_cli("plan", "meta-llama/Llama-3.1-8B-Instruct", "--device", "laptop-x86-16gb",
                           "--calibrate", "--max-kld", "1", "--json").stdout)
    assert j["calibration"]["ram_bytes"] < 6 << 30 and j["calibration"]["temp_disk_bytes"] > 4 << 30
