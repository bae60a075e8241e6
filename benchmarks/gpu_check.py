"""The GPU check: what a first CUDA machine should run, in one command, in under 8 minutes, into one folder.

    python benchmarks/gpu_check.py OUT          # or: make gpu-check GPU_CHECK_OUT=OUT
    python benchmarks/gpu_check.py OUT --dry    # the same plan on the CPU at tiny sizes (about 2 minutes)
    python benchmarks/gpu_check.py --list       # print the GPU plan (with --dry, the CPU one); run nothing

Needs torch with CUDA, lightning, pyyaml and pytest; installs nothing, reaches no network, imports torchbop from
``src/``. The steps (``--only`` picks some), each a process with its own timeout, under one deadline (``--budget``):
``tests``: ``pytest -m gpu tests``, every test marked ``gpu`` (junit XML in ``tests.xml``); ``train``: the ``cifar10``
recipe at full width with ``compile: true`` for ``--epochs`` epochs, killed at its timeout (the time box), on real
CIFAR-10 when found, else on a synthetic learnable set of its shape (``train.json``: images/s, test accuracy, steps);
the benchmarks ``optimizer_step``, ``train_step``, ``data_pipeline``, each with its own ``--device cuda``
(``train_speed.py``, the engine against a lean loop, has no CUDA flag yet: not in the plan). Each step writes
``OUT/<step>.log``; ``OUT/summary.json`` and ``OUT/summary.md`` (versions; per step its status, ``ok``, ``failed (exit
N)``, ``timeout`` or ``skipped``, its seconds, command, numbers, last lines) are rewritten after every step. Exit status
1 when a step failed or timed out.

Without CUDA, or with ``--dry``, the same steps run on the CPU (``--device cpu``, one thread, every flag of the GPU
command at tiny sizes, BinaryNet 1/32 wide for 5 steps without ``compile``: inductor takes minutes on a CPU, and
tests/training/test_compiled_step.py covers that step there; ``pytest -m gpu`` skips the CUDA tests). So each command
has run once before it meets a GPU: tests/test_gpu_check.py runs the dry check.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable


def plan(dry: bool, out: Path, epochs: int = 4) -> list[tuple[str, list[str], float]]:
    """The steps as ``(name, command, timeout in seconds)``, run in this order from the repository root."""

    def bench(script: str, gpu: str, cpu: str) -> list[str]:  # cpu: every flag of gpu too, at tiny sizes
        return [
            PY,
            f"benchmarks/{script}",
            "--device",
            "cpu" if dry else "cuda",
            *(["--threads", "1", *cpu.split()] if dry else gpu.split()),
        ]

    return [
        (
            "tests",
            [
                PY,
                "-m",
                "pytest",
                "-q",
                "-p",
                "no:cacheprovider",
                "-m",
                "gpu",
                "-rfEs",
                "--continue-on-collection-errors",
                f"--junitxml={out / 'tests.xml'}",
                "tests",
            ],
            240,
        ),
        (
            "train",
            [PY, str(Path(__file__).resolve()), str(out), "--train", "--epochs", str(epochs)]
            + (["--dry"] if dry else []),
            120 if dry else 200,
        ),
        (
            "optimizer_step",
            bench("optimizer_step.py", "--rounds 8 --warmup 3", "--rounds 1 --warmup 1 --width 0.03125 --no-fused"),
            60,
        ),
        (
            "train_step",
            bench("train_step.py", "--widths 1.0,0.25 --steps 8 --warmup 3", "--widths 0.03125 --steps 1 --warmup 1"),
            90,
        ),
        (
            "data_pipeline",
            bench(
                "data_pipeline.py",
                "--images 20000 --repeats 2",
                "--images 500 --repeats 1 --baseline-images 100 --batch-sizes 50",
            ),
            60,
        ),
    ]


def run_step(cmd: list[str], log: Path, timeout: float) -> tuple[str, float]:
    """Run ``cmd`` into ``log``; after ``timeout`` seconds kill its whole process group. Returns (status, seconds)."""
    path = os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")]))
    start = time.perf_counter()
    with open(log, "w") as stream:
        stream.write(f"$ {' '.join(cmd)}\n")
        stream.flush()
        proc = subprocess.Popen(
            cmd,
            stdout=stream,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            start_new_session=True,
            env={**os.environ, "PYTHONPATH": path, "PYTHONUNBUFFERED": "1"},
        )
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # compilers and data workers too
            proc.wait()
            stream.write(f"\n[gpu_check] killed after {timeout:.0f} s\n")
            return "timeout", time.perf_counter() - start
    return ("ok" if rc == 0 else f"failed (exit {rc})"), time.perf_counter() - start


def write_summary(out: Path, summary: dict) -> None:
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    env = summary["env"]
    lines = [
        f"# GPU check ({summary['mode']}): {env['gpu'] or 'no GPU'}, torch {env['torch']}, "
        f"{summary['seconds']:.0f} s of {summary['budget_s']:.0f}",
        "",
        "| step | status | seconds |",
        "|---|---|---|",
    ]
    lines += [f"| {n} | {s['status']} | {s.get('seconds', '')} |" for n, s in summary["steps"].items()]
    for name, step in summary["steps"].items():
        lines += ["", f"## {name}: {step['status']}", "", f"`{' '.join(step['command'])}`", step.get("note", "")]
        if step.get("numbers") is not None:
            lines += ["```json", json.dumps(step["numbers"], indent=1, default=str)[:4000], "```"]
        if step.get("tail") and (step["status"] != "ok" or step.get("numbers") is None):
            lines += [f"Last lines of `{step['log']}`:", "```", step["tail"], "```"]
    (out / "summary.md").write_text("\n".join(lines) + "\n")


def check(out: Path, dry: bool, budget: float, only: list[str] | None = None, epochs: int = 4) -> int:
    """Run the plan's steps (those in ``only``) into ``out``; 0 when none failed or timed out."""
    import torch

    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    env = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    summary = {"mode": "dry (CPU)" if dry else "gpu", "env": env, "budget_s": budget, "steps": {}}
    for name, cmd, timeout in plan(dry, out, epochs):
        if only is not None and name not in only:
            continue
        left = budget - (time.perf_counter() - start)
        script = ROOT / cmd[1] if cmd[1].startswith("benchmarks/") else None
        if left < 10 or (script is not None and not script.is_file()):
            note = f"the budget is spent ({left:.0f} s left)" if left < 10 else f"{cmd[1]} not found"
            summary["steps"][name] = {"status": "skipped", "note": note, "command": cmd}
        else:
            print(f"[gpu_check] {name} (at most {min(timeout, left):.0f} s) ...", flush=True)
            status, seconds = run_step(cmd, out / f"{name}.log", min(timeout, left))
            tail = (out / f"{name}.log").read_text(errors="replace").splitlines()[-(25 if status == "ok" else 40) :]
            result = out / f"{name}.json"  # the train step's numbers
            summary["steps"][name] = {
                "status": status,
                "seconds": round(seconds, 1),
                "command": cmd,
                "log": f"{name}.log",
                "tail": "\n".join(tail),
                "numbers": json.loads(result.read_text()) if result.is_file() else None,
            }
            print(f"[gpu_check] {name}: {status} in {seconds:.0f} s", flush=True)
        summary["seconds"] = round(time.perf_counter() - start, 1)
        write_summary(out, summary)
    bad = [n for n, s in summary["steps"].items() if s["status"] not in ("ok", "skipped")]
    print(f"[gpu_check] {'not ok: ' + ', '.join(bad) if bad else 'every step ok or skipped'}; see {out / 'summary.md'}")
    return 1 if bad else 0


def synthetic_cifar(n: int, seed: int) -> tuple:
    """uint8 CIFAR-shaped noise with a bright square whose place and channel name the class: learnable at once."""
    import torch

    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 10, (n,), generator=g)
    images = (torch.rand(n, 3, 32, 32, generator=g) * 120).to(torch.uint8)
    for c in range(10):
        images[labels == c, c % 3, 4 + 12 * (c // 5) : 10 + 12 * (c // 5), 2 + 6 * (c % 5) : 8 + 6 * (c % 5)] = 255
    return images, labels


def train_run(out: Path, dry: bool, epochs: int) -> None:
    """The ``train`` step, in a process of its own: trains into ``OUT/train``, writes ``OUT/train.json``."""
    import shutil

    from torchbop.training import load_recipe, train

    overrides = [f"out={out / 'train'}", "progress_bar=false", "devices=1", f"accelerator={'cpu' if dry else 'gpu'}"]
    overrides += (
        ["model_kwargs.width=0.03125", "epochs=1", "limit_train_batches=5", "limit_eval_batches=1"]
        if dry
        else ["compile=true", f"epochs={epochs}"]
    )
    data, source = {"train": synthetic_cifar(500, 1), "test": synthetic_cifar(250, 2)}, "SYNTHETIC (a dry run)"
    if not dry:
        try:
            from torchbop.data import load_cifar10

            data, source = {s: load_cifar10(train=s == "train") for s in ("train", "test")}, "CIFAR-10"
        except Exception as error:  # a GPU machine may have no CIFAR-10: train on a synthetic set of its shape
            data = {"train": synthetic_cifar(50_000, 1), "test": synthetic_cifar(10_000, 2)}
            source = f"SYNTHETIC (no CIFAR-10: {str(error)[:200]})"
    shutil.rmtree(out / "train", ignore_errors=True)
    result = train(load_recipe("cifar10", overrides), data=data)
    for checkpoint in (out / "train").rglob("*.ckpt"):  # 100+ MB at full width: too large to bring back
        checkpoint.unlink()
    report = json.dumps({**result, "data_source": source, "overrides": overrides}, indent=2, default=str)
    (out / "train.json").write_text(report)
    print(report)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out", type=Path, nargs="?", help="the folder for every result (created)")
    parser.add_argument("--dry", action="store_true", help="the CPU plan at tiny sizes, even where CUDA is available")
    parser.add_argument("--list", action="store_true", help="print the plan's commands and run nothing")
    parser.add_argument("--budget", type=float, default=None, help="seconds for all steps (default 470; dry: 170)")
    parser.add_argument("--only", default=None, help="comma-separated steps to run (default: all)")
    parser.add_argument("--epochs", type=int, default=4, help="epochs of the train step on the GPU (default 4)")
    parser.add_argument("--train", action="store_true", help=argparse.SUPPRESS)  # the train step's own process
    args = parser.parse_args(argv)
    if args.out is None and not args.list:
        parser.error("the results folder OUT is required")
    out = (args.out or Path("OUT")).resolve()
    steps = [name for name, _, _ in plan(args.dry, out)]
    only = None if args.only is None else [s.strip() for s in args.only.split(",") if s.strip()]
    if only is not None and set(only) - set(steps):
        parser.error(f"--only: unknown step(s) {sorted(set(only) - set(steps))}; the steps are {', '.join(steps)}")
    if args.list:
        for name, cmd, timeout in plan(args.dry, out, args.epochs):
            print(f"{name} (timeout {timeout:.0f} s): {' '.join(cmd)}")
        return 0
    sys.path.insert(0, str(ROOT / "src"))
    if args.train:
        train_run(out, args.dry, args.epochs)
        return 0
    import torch

    dry = args.dry or not torch.cuda.is_available()
    return check(out, dry, args.budget or (170.0 if dry else 470.0), only, args.epochs)


if __name__ == "__main__":
    sys.exit(main())
