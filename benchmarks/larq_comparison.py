"""Training images/s of ``torchbop train --recipe mnist`` against Larq on the same network, recipe and CPU.

Larq (TensorFlow) lives in its own environment, so both sides run as subprocesses: ``benchmarks/larq_mnist_bnn.py``
under ``--larq-python`` and ``python -m torchbop.cli train --recipe mnist`` under this Python, each with
``--threads`` threads (``OMP_NUM_THREADS`` for torch, TensorFlow's intra/inter-op settings for Larq), one after
another, the order alternating each round, so that a noisy machine affects both alike; round r trains with seed r on
both sides. Each side reports the images/s of its first training epoch (validation excluded, warm-up included on both
sides) and the test accuracy after training (noisy from seed to seed after one epoch, on both sides); the table gives
each round and the median ratio torchbop / Larq (issue 8's target: >= 1).

    TORCHBOP_DATA=../shared/data python benchmarks/larq_comparison.py --larq-python /path/to/larq-env/bin/python \
        [--threads 2] [--rounds 2] [--epochs 1] [--subset N]

Setting up Larq: ``python3.11 -m venv larq-env && larq-env/bin/pip install larq tensorflow-cpu "tf-keras~=2.21.0"``
(Larq 0.14 needs Keras 2: the script sets ``TF_USE_LEGACY_KERAS=1``). A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent


def run_larq(args: argparse.Namespace, seed: int) -> dict:
    command = [
        args.larq_python,
        str(HERE / "larq_mnist_bnn.py"),
        "--data-dir",
        args.data_dir,
        "--threads",
        str(args.threads),
        "--epochs",
        str(args.epochs),
        "--seed",
        str(seed),
    ]
    if args.subset is not None:
        command += ["--subset", str(args.subset)]
    env = {**os.environ, "TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        sys.exit(f"the Larq run failed ({' '.join(command)}):\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return {"images_per_s": result["images_per_s"][0], "test_acc": result["test_acc"], "name": result["framework"]}


def run_torchbop(args: argparse.Namespace, seed: int) -> dict:
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "run"
        command = [
            sys.executable,
            "-m",
            "torchbop.cli",
            "train",
            "--recipe",
            "mnist",
            "--epochs",
            str(args.epochs),
            "--seed",
            str(seed),
            "--data-dir",
            args.data_dir,
            "--out",
            str(out),
            "--no-progress",
        ]
        if args.subset is not None:
            command += ["--subset", str(args.subset)]
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
        done = subprocess.run(command, capture_output=True, text=True, env=env)
        if done.returncode != 0:
            sys.exit(f"the torchbop run failed ({' '.join(command)}):\n{done.stderr[-3000:]}")
        summary = json.loads((out / "summary.json").read_text())
    return {"images_per_s": summary["train_images_per_s"], "test_acc": summary["test_acc"], "name": "torchbop train"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--larq-python", required=True, help="a Python with larq, tensorflow and tf-keras")
    parser.add_argument(
        "--data-dir",
        default=os.environ.get("TORCHBOP_DATA"),
        help="the data root holding mnist/ (default: $TORCHBOP_DATA)",
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--subset", type=int, default=None, help="train on N images (Larq: the first N)")
    args = parser.parse_args()
    if not args.data_dir:
        parser.error("give --data-dir or set TORCHBOP_DATA")

    rows: dict[str, list[dict]] = {"larq": [], "torchbop": []}
    runners = [("larq", run_larq), ("torchbop", run_torchbop)]
    for r in range(args.rounds):
        for side, runner in runners if r % 2 == 0 else runners[::-1]:
            rows[side].append(runner(args, seed=r))
            last = rows[side][-1]
            print(
                f"round {r + 1}: {last['name']}: {last['images_per_s']:.0f} images/s, test accuracy "
                f"{last['test_acc']:.4f}",
                flush=True,
            )
    print(
        f"\nMNIST BNN, recipe mnist, {args.epochs} epoch(s){'' if args.subset is None else f' on {args.subset} images'}"
        f", {args.threads} thread(s), first epoch's training images/s:"
    )
    print("| | " + " | ".join(f"round {r + 1}" for r in range(args.rounds)) + " | median | test accuracy |")
    print("|---" * (args.rounds + 3) + "|")
    medians = {}
    for side, results in rows.items():
        speeds = [x["images_per_s"] for x in results]
        medians[side] = statistics.median(speeds)
        print(
            f"| {results[0]['name']} | "
            + " | ".join(f"{s:.0f}" for s in speeds)
            + f" | {medians[side]:.0f} | "
            + ", ".join(f"{x['test_acc']:.4f}" for x in results)
            + " |"
        )
    print(f"\ntorchbop / Larq images/s (medians): {medians['torchbop'] / medians['larq']:.2f}")


if __name__ == "__main__":
    main()
