"""scripts/gpu_check.py runs on the CPU in CI: --device cpu --quick.

On a CPU the "device" and the reference are the same path, so these tests check the script's
wiring, its report and that each check can fail, not a GPU: the GPU figures come from a lent GPU
(docs/benchmarks.md, gpu_check)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "gpu_check.py"


def load_script():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gpu_check_quick_on_cpu_compares_the_cpu_with_itself(capsys, monkeypatch):
    gpu_check = load_script()
    seen = []
    real = gpu_check.run_checks
    monkeypatch.setattr(gpu_check, "run_checks", lambda *a: seen.append(real(*a)) or seen[-1])
    assert gpu_check.main(["--device", "cpu", "--quick", "--images", "16"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("**PASS** on cpu")
    for figure in ("solve on cpu vs CPU", "top-1 fp32", "top-1 fp16", "top-1 bf16", "images/s: DataLoader",
                   "images/s: decode gpu: nvJPEG on cpu", "decode gpu vs pil"):
        assert figure in out, out
    r = seen[0]
    assert r["solve"]["max_abs_diff"] == 0.0 and r["solve"]["d"] == 64
    assert r["solve"]["note"] == "CPU against itself"  # what this test does and does not show
    assert set(r["precision"]["top1"]) == {"fp32", "fp16", "bf16"}
    assert r["precision"]["n_images"] == 50
    assert r["precision"]["gap_points"]["fp32"] == 0.0
    assert r["throughput"]["n_images"] == 16
    assert set(r["throughput"]["ratio"]) == {"pil", "gpu"} and min(r["throughput"]["ratio"].values()) > 0
    # the gpu decoder's own code on the CPU: libjpeg and torchvision's resize, close to PIL's
    assert r["decode_top1"]["n_images"] == 16 and abs(r["decode_top1"]["gap_points"]) <= 100 / 16
    assert r["ok"] is True


def test_gpu_check_refuses_cuda_without_gpu(capsys, monkeypatch):
    gpu_check = load_script()
    monkeypatch.setattr(gpu_check.torch.cuda, "is_available", lambda: False)
    assert gpu_check.main(["--device", "cuda", "--quick"]) == 2
    assert "torch sees no GPU" in capsys.readouterr().err


def test_a_solve_that_disagrees_fails_the_check(monkeypatch):
    """The device solve off by 1e-3 from the CPU's: the solve check says so."""
    gpu_check = load_script()
    from ccup_cli.backends.open_clip import load_model
    from ccup_cli.text.templates import load_templates

    real, calls = gpu_check.ccup_map, []

    def second_call_perturbed(*args, **kwargs):
        calls.append(kwargs.get("device"))
        W = real(*args, **kwargs)
        return W + 1e-3 if len(calls) == 2 else W

    monkeypatch.setattr(gpu_check, "ccup_map", second_call_perturbed)
    result = gpu_check.check_solve(load_model(), "cpu", load_templates("photo"))
    assert len(calls) == 2 and result["ok"] is False
    assert abs(result["max_abs_diff"] - 1e-3) < 1e-9
