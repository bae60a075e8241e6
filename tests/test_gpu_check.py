"""benchmarks/gpu_check.py: its plan, the orchestration (statuses, time-outs, the summary), its dry run on the CPU; and
the CUDA training checks that `pytest -m gpu` runs as the check's ``tests`` step (skipped without CUDA)."""

from __future__ import annotations

import collections
import importlib.util
import json
import math
import subprocess
import sys
import warnings
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


def flags(cmd):
    return {arg for arg in cmd if arg.startswith("--")}


def test_the_gpu_plan_and_its_dry_twin(gpu_check, tmp_path):
    """On the GPU the benchmarks get their own --device cuda and the tests the marker; the dry plan runs the same
    steps with every flag of the GPU commands (so the dry run tries each flag once), on the CPU."""
    gpu, dry = gpu_check.plan(False, tmp_path), gpu_check.plan(True, tmp_path)
    assert (
        [name for name, _, _ in gpu]
        == [name for name, _, _ in dry]
        == ["tests", "train", "optimizer_step", "train_step", "data_pipeline"]
    )
    assert gpu[0][1][gpu[0][1].index("-m", 3) + 1] == "gpu" and gpu[0][1][-1] == "tests"
    for (name, cmd, _), (_, dry_cmd, _) in zip(gpu, dry):
        if cmd[1].startswith("benchmarks/"):
            assert (ROOT / cmd[1]).is_file(), name
            assert cmd[cmd.index("--device") + 1] == "cuda" and dry_cmd[dry_cmd.index("--device") + 1] == "cpu"
        assert flags(cmd) <= flags(dry_cmd) | {"--dry"}, name
    assert "--dry" in dry[1][1] and "--dry" not in gpu[1][1]


def test_list_prints_the_plan_and_runs_nothing(gpu_check, capsys, tmp_path):
    assert gpu_check.main(["--list", str(tmp_path / "out")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 5 and all("--device cuda" in line for line in lines[2:])
    assert gpu_check.main(["--list", "--dry"]) == 0
    assert capsys.readouterr().out.count("--device cpu") == 3
    assert not (tmp_path / "out").exists()


def test_statuses_time_out_and_summary(gpu_check, tmp_path, monkeypatch):
    """Each step's status (ok, failed with its exit code, timeout after killing its process group, skipped when its
    script is gone or the budget is spent) lands in summary.json and summary.md with its log."""
    py = sys.executable
    steps = [
        ("fine", [py, "-c", "print('fine')"], 20),
        ("hang", [py, "-c", "import time; print('started', flush=True); time.sleep(60)"], 2),
        ("broken", [py, "-c", "raise SystemExit(3)"], 20),
        ("gone", [py, "benchmarks/no_such_benchmark.py"], 20),
    ]
    monkeypatch.setattr(gpu_check, "plan", lambda dry, out, epochs=4: steps)
    assert gpu_check.check(tmp_path, dry=True, budget=60.0) == 1
    summary = json.loads((tmp_path / "summary.json").read_text())
    status = {name: step["status"] for name, step in summary["steps"].items()}
    assert status == {"fine": "ok", "hang": "timeout", "broken": "failed (exit 3)", "gone": "skipped"}
    assert "started" in summary["steps"]["hang"]["tail"] and "killed after 2 s" in summary["steps"]["hang"]["tail"]
    assert summary["steps"]["gone"]["note"] == "benchmarks/no_such_benchmark.py not found"
    assert (tmp_path / "fine.log").read_text().strip().endswith("fine") and summary["seconds"] < 30
    markdown = (tmp_path / "summary.md").read_text()
    assert "| hang | timeout |" in markdown and "| broken | failed (exit 3) |" in markdown

    assert gpu_check.check(tmp_path / "late", dry=True, budget=5.0, only=["fine"]) == 0  # too little time left
    late = json.loads((tmp_path / "late" / "summary.json").read_text())["steps"]
    assert list(late) == ["fine"] and late["fine"]["status"] == "skipped" and "budget" in late["fine"]["note"]


@pytest.mark.slow
def test_dry_run(tmp_path):
    """The script end to end on the CPU, as `make gpu-check` runs it without CUDA, with two of its steps (20 to 45 s
    on a 2-core machine; the whole dry plan takes about 2 minutes): the training run reports its numbers and leaves
    no checkpoint, the benchmark its table, the summary both."""
    out = tmp_path / "check"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), str(out), "--dry", "--only", "train,data_pipeline"],
        capture_output=True,
        text=True,
        timeout=200,
        cwd=ROOT,
    )
    summary = json.loads((out / "summary.json").read_text())
    assert summary["mode"] == "dry (CPU)" and list(summary["steps"]) == ["train", "data_pipeline"], proc.stdout
    for name, step in summary["steps"].items():
        assert step["status"] == "ok", (name, step["tail"])
        assert "--device cpu" in " ".join(step["command"]) or name == "train"
    trained = summary["steps"]["train"]["numbers"]
    assert trained["global_step"] == 5 and trained["train_images_per_s"] > 0 and 0.0 <= trained["test_acc"] <= 1.0
    assert trained["data_source"].startswith("SYNTHETIC") and trained["device"] == "cpu"
    assert not list((out / "train").rglob("*.ckpt"))
    assert "img/s" in (out / "data_pipeline.log").read_text()  # its table
    assert proc.returncode == 0 and (out / "summary.md").is_file()


def test_synthetic_cifar_shape_and_classes(gpu_check):
    images, labels = gpu_check.synthetic_cifar(200, 0)
    assert images.shape == (200, 3, 32, 32) and images.dtype == torch.uint8 and labels.shape == (200,)
    assert set(labels.tolist()) == set(range(10))
    for c in range(3):  # the class's square is bright, elsewhere only noise below 120
        assert (images[labels == c, c % 3, 4:10, 2 + 6 * c : 8 + 6 * c] == 255).all()


# ----------------------------------------------------------------------------------------------------------------
# on a CUDA machine (skipped without one): the training engine on the GPU, through its public entry point
# ----------------------------------------------------------------------------------------------------------------
def cuda_config(out, steps, **changes):
    from torchbop.training import TrainConfig

    return TrainConfig(
        name="cuda",
        model="binarynet",
        model_kwargs={"width": 0.0625},
        dataset="cifar10",
        augment=True,
        batch_size=50,
        eval_batch_size=200,
        epochs=1,
        gamma=1e-3,
        threshold=1e-6,
        lr=0.01,
        accelerator="gpu",
        devices=1,
        limit_train_batches=steps,
        limit_eval_batches=1,
        progress_bar=False,
        log_every_n_steps=100,
        out=str(out),
        **changes,
    )


@pytest.mark.gpu
@pytest.mark.parametrize(
    "changes", [{}, {"precision": "bf16-mixed"}, {"compile": True}], ids=["fp32", "bf16", "compile"]
)
def test_cuda_training_20_steps(gpu_check, changes, tmp_path):
    """20 steps of BinaryNet on the GPU: the weights stay +-1 on the device, some flip, the loss is finite."""
    from torchbop.models import create_model
    from torchbop.nn import named_binary_parameters
    from torchbop.training import train

    model = create_model("binarynet", width=0.0625)
    before = {name: w.detach().clone() for name, w in named_binary_parameters(model)}
    data = {"train": gpu_check.synthetic_cifar(1000, 1), "test": gpu_check.synthetic_cifar(200, 2)}
    result = train(cuda_config(tmp_path, 20, **changes), data=data, model=model)
    assert result["device"].startswith("cuda") and result["global_step"] == 20
    assert math.isfinite(result["test_loss"])
    flipped = 0
    for name, w in named_binary_parameters(model):
        assert w.is_cuda and bool(((w == 1) | (w == -1)).all()), name
        flipped += int((w.cpu() != before[name]).sum())
    assert flipped > 0


@pytest.mark.gpu
def test_cuda_compiled_steps_make_no_host_sync(gpu_check, tmp_path):
    """CUDA's sync debug mode warns at every host sync; runs of 10 and 20 compiled steps (one epoch each, nothing
    logged in between) share their fixed syncs (compilation, epoch end, test), so any difference is per step."""
    from torchbop.training import train

    data = {"train": gpu_check.synthetic_cifar(1000, 1), "test": gpu_check.synthetic_cifar(200, 2)}

    def syncs(steps):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                train(cuda_config(tmp_path / str(steps), steps, compile=True), data=data)
            finally:
                torch.cuda.set_sync_debug_mode(0)
        return collections.Counter(
            f"{Path(w.filename).name}:{w.lineno}" for w in caught if "synchroniz" in str(w.message)
        )

    short, long = syncs(10), syncs(20)
    assert sum(long.values()) == sum(short.values()), f"10 more steps, more syncs at: {dict(long - short)}"
