"""benchmarks/gpu_check.py: its dry run on CPU (the GPU run's code paths at tiny sizes), its pieces, and on a CUDA
machine its smoke checks as ``gpu`` tests (so that ``pytest -m gpu`` runs them too)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_dry_run_writes_every_part(tmp_path):
    """The check in its smallest dry form, with the parts this repository's check owns (the full dry run adds the
    pytest part and the optimizer and train-step benchmarks, about 2 minutes on a 2-core CPU): each part runs (or
    is recorded as skipped, with the reason, when the budget is spent), the summary lists them, and the time-boxed
    run reports its numbers."""
    out = tmp_path / "check"
    parts = ["env", "smoke", "timebox", "lightning_overhead"]
    # the budget is a ceiling for a busy machine; an idle 2-core one needs about 30 s
    proc = subprocess.run([sys.executable, str(SCRIPT), str(out), "--dry", "--tiny", "--dry-budget", "100",
                           "--parts", ",".join(parts)], capture_output=True, text=True, timeout=200, cwd=ROOT)
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary["parts"]) == parts, proc.stdout
    parts = summary["parts"]
    assert summary["mode"] == "dry (CPU)" and (out / "summary.md").is_file()
    ran = {name: part for name, part in parts.items() if part["status"] != "skipped"}
    # the check's own parts must run and pass on CPU; a benchmark may be skipped when the budget is spent
    for name in ("env", "smoke", "timebox"):
        assert parts[name]["status"] == "ok", (name, parts[name].get("tail"))
    for name, part in parts.items():  # a benchmark cut short by the budget is recorded as such
        assert part["status"] in ("ok", "skipped", "timeout"), (name, part.get("tail"))
        if part["status"] == "skipped":
            assert part["note"]
        if part["status"] == "timeout":
            assert "killed after" in part["tail"]
    smoke = parts["smoke"]["numbers"]
    assert all(check["ok"] for check in smoke["checks"].values())
    assert "train_compile" in smoke["checks"]
    timebox = parts["timebox"]["numbers"]
    assert timebox["global_step"] > 0 and timebox["images_per_s"] > 0
    assert 0.0 <= timebox["test_acc"] <= 1.0 and timebox["config"]["compile"] is True
    assert not list((out / "timebox" / "checkpoints").glob("*.ckpt"))  # deleted: too large to bring back
    for name in ran:
        if name != "env":
            assert (out / f"{name}.log").is_file()
    assert summary["seconds"] < 100 + 15, summary["seconds"]  # the deadline, and the last part's kill grace
    assert proc.returncode == (0 if all(p["status"] in ("ok", "skipped") for p in parts.values()) else 1)


def test_flags_a_benchmark_does_not_take_are_left_out(gpu_check):
    kept, dropped = gpu_check.keep_supported(["--device", "cuda", "--rounds", "3", "--no-fused", "--new", "1"],
                                             {"--device", "--rounds", "--no-fused"})
    assert kept == ["--device", "cuda", "--rounds", "3", "--no-fused"] and dropped == ["--new", "1"]
    for script in ("optimizer_step.py", "train_step.py", "data_pipeline.py", "lightning_overhead.py"):
        assert "--device" in gpu_check.supported_flags(ROOT / "benchmarks" / script, {}), script


def test_a_hanging_part_is_killed_and_recorded(gpu_check, tmp_path):
    args = gpu_check.argparse.Namespace(results=tmp_path, dry=True, device="cpu", budget=30.0, extra_path=None,
                                        data_dir=None, timebox=1.0, set=[], tiny=True)
    check = gpu_check.Check(args)
    entry = check.run_part("hang", [sys.executable, "-c", "import time; print('started', flush=True); "
                                    "time.sleep(60)"], timeout=2)
    assert entry["status"] == "timeout" and "started" in entry["tail"]
    assert json.loads((tmp_path / "summary.json").read_text())["parts"]["hang"]["status"] == "timeout"


def test_synthetic_cifar_is_learnable_shape(gpu_check):
    images, labels = gpu_check.synthetic_cifar(100, 0)
    assert images.shape == (100, 3, 32, 32) and images.dtype == torch.uint8 and labels.shape == (100,)


# ----------------------------------------------------------------------------------------------------------------
# on a CUDA machine (skipped without one): the smoke checks, run by `pytest -m gpu`
# ----------------------------------------------------------------------------------------------------------------
@pytest.mark.gpu
def test_cuda_loader_and_bop_paths(gpu_check):
    device = torch.device("cuda")
    gpu_check.smoke_loader(device)
    gpu_check.smoke_bop_paths(device, fused=True)


@pytest.mark.gpu
@pytest.mark.parametrize("changes", [{}, {"precision": "bf16-mixed"}, {"compile": True}],
                         ids=["fp32", "bf16", "compile"])
def test_cuda_training_20_steps(gpu_check, changes):
    result = gpu_check.smoke_train(torch.device("cuda"), 0.0625, 20, changes)
    assert result["device"].startswith("cuda") and result["flips"] > 0


@pytest.mark.gpu
def test_cuda_compiled_step_has_no_host_sync(gpu_check):
    syncs = gpu_check.smoke_host_syncs(torch.device("cuda"), 0.0625, compile_=True)
    assert syncs["total"] == 0, syncs["where"]
