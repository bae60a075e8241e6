"""fp32 against bf16-mixed test accuracy of one recipe over several seeds: the parity check behind ``precision: auto``.

Each (seed, precision) is one ``torchbop train`` run, started one after another (never in parallel) in
``OUT/<recipe>-w<width>-e<epochs>/<precision>-seed<seed>/``; a run whose ``summary.json`` exists is not run again and
a killed one resumes from its last checkpoint (``torchbop train --resume``), so an interrupted check continues where
it stopped. The table gives each seed's test accuracy in both precisions, the
means and the mean difference (bf16 - fp32) in percentage points, the last epoch's training accuracy (batch norm on
batch statistics; much steadier from seed to seed than the test accuracy after a few epochs of Bop), and the training
images/s of each run; below it, the seed-to-seed spread and the standard error of each mean difference.

    python benchmarks/precision_parity.py --recipe mnist --seeds 0,1,2 --out /tmp/parity
    python benchmarks/precision_parity.py --recipe cifar10 --width 0.125 --epochs 3 --seeds 0 --out /tmp/parity
    python benchmarks/precision_parity.py ... --table-only        # print the table of the runs already done

Extra ``torchbop train`` arguments follow ``--``, e.g. ``-- --subset 10000``. The criterion of issue 8: mean test
accuracies within 0.3 points. bf16-mixed is emulated (slower than fp32) on CPUs without AVX512-BF16 or AMX; the
accuracies it reaches are the same either way (the arithmetic is the same).

Measured on the 2-core development VM (AMD EPYC, AVX2 only, so bf16 emulated; torch 2.13.0+cpu): see README
"Precision and memory format" for the tables.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

PRECISIONS = ("32", "bf16-mixed")


def run_dir(args: argparse.Namespace, precision: str, seed: int) -> Path:
    width = "" if args.width is None else f"-w{args.width:g}"
    epochs = "" if args.epochs is None else f"-e{args.epochs}"
    return Path(args.out) / f"{args.recipe}{width}{epochs}" / f"{precision}-seed{seed}"


def run(args: argparse.Namespace, precision: str, seed: int) -> None:
    out = run_dir(args, precision, seed)
    if (out / "summary.json").is_file():
        return
    if (out / "checkpoints" / "last.ckpt").is_file():  # killed earlier: continue where it stopped
        command = [sys.executable, "-m", "torchbop.cli", "train", "--resume", str(out), "--no-progress"]
    else:
        command = [
            sys.executable,
            "-m",
            "torchbop.cli",
            "train",
            "--recipe",
            args.recipe,
            "--seed",
            str(seed),
            "--precision",
            precision,
            "--no-progress",
            "--out",
            str(out),
            "--overwrite",
        ]
        if args.width is not None:
            command += ["--width", str(args.width)]
        if args.epochs is not None:
            command += ["--epochs", str(args.epochs)]
        command += args.extra
    print("$", " ".join(command), flush=True)
    started = time.perf_counter()
    subprocess.run(command, check=True, env=os.environ.copy())
    print(f"  {time.perf_counter() - started:.0f} s", flush=True)


def last_train_acc(folder: Path) -> float:
    """The last epoch's training accuracy (the mean over its batches, batch norm on batch statistics) from the run's
    CSV log: a steadier measure of how well a precision trains than the test accuracy after the last epoch."""
    values = []
    for path in sorted(folder.glob("csv/version_*/metrics.csv")):
        with path.open() as f:
            values += [float(row["train_acc_epoch"]) for row in csv.DictReader(f) if row.get("train_acc_epoch")]
    return values[-1] if values else float("nan")


def spread_line(what: str, acc: dict[str, list[float]]) -> str:
    spread = {p: 100 * statistics.stdev(v) for p, v in acc.items()}
    diffs = [100 * (b - a) for a, b in zip(acc["32"], acc["bf16-mixed"])]
    error = statistics.stdev(diffs) / len(diffs) ** 0.5
    return (
        f"{what}: seed-to-seed standard deviation fp32 {spread['32']:.2f} points, bf16-mixed "
        f"{spread['bf16-mixed']:.2f}; mean difference {statistics.mean(diffs):+.2f} points, standard error "
        f"{error:.2f} (paired by seed)."
    )


def table(args: argparse.Namespace, seeds: list[int]) -> str:
    rows = [
        "| seed | fp32 test acc | bf16-mixed test acc | bf16 - fp32 (points) | fp32 / bf16 train acc, last epoch "
        "| fp32 images/s | bf16 images/s |",
        "|---|---|---|---|---|---|---|",
    ]
    acc: dict[str, list[float]] = {p: [] for p in PRECISIONS}
    train_acc: dict[str, list[float]] = {p: [] for p in PRECISIONS}
    for seed in seeds:
        summaries = {}
        for precision in PRECISIONS:
            path = run_dir(args, precision, seed) / "summary.json"
            summaries[precision] = json.loads(path.read_text()) if path.is_file() else None
        if any(s is None for s in summaries.values()):
            rows.append(
                f"| {seed} | "
                + " | ".join(f"{s['test_acc']:.4f}" if s else "(not run)" for s in summaries.values())
                + " | | | | |"
            )
            continue
        for p in PRECISIONS:
            acc[p].append(summaries[p]["test_acc"])
            train_acc[p].append(last_train_acc(run_dir(args, p, seed)))
        a, b = acc["32"][-1], acc["bf16-mixed"][-1]
        speed = [summaries[p]["train_images_per_s"] for p in PRECISIONS]
        rows.append(
            f"| {seed} | {a:.4f} | {b:.4f} | {100 * (b - a):+.2f} | {train_acc['32'][-1]:.4f} / "
            f"{train_acc['bf16-mixed'][-1]:.4f} | {speed[0]:.0f} | {speed[1]:.0f} |"
        )
    if acc["32"]:
        m32, mbf = statistics.mean(acc["32"]), statistics.mean(acc["bf16-mixed"])
        t32, tbf = statistics.mean(train_acc["32"]), statistics.mean(train_acc["bf16-mixed"])
        rows.append(
            f"| mean ({len(acc['32'])}) | {m32:.4f} | {mbf:.4f} | {100 * (mbf - m32):+.2f} | {t32:.4f} / "
            f"{tbf:.4f} | | |"
        )
    if len(acc["32"]) >= 2:
        rows += [
            "",
            spread_line("Test accuracy", acc),
            spread_line("Training accuracy of the last epoch", train_acc),
            "The 0.3-point criterion is decidable only where the standard error is well below 0.3.",
        ]
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="mnist")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds")
    parser.add_argument("--width", type=float, default=None, help="model_kwargs.width (BinaryNet)")
    parser.add_argument("--epochs", type=int, default=None, help="default: the recipe's")
    parser.add_argument("--out", default="runs/precision_parity")
    parser.add_argument("--table-only", action="store_true", help="only print the table of the runs already done")
    parser.add_argument("extra", nargs="*", help="more torchbop train arguments (after --)")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    if not args.table_only:
        for seed in seeds:
            for precision in PRECISIONS:
                run(args, precision, seed)
    print(
        f"\n{args.recipe}"
        + (f", width {args.width:g}" if args.width is not None else "")
        + (f", {args.epochs} epochs" if args.epochs is not None else "")
        + f", seeds {args.seeds}"
    )
    print(table(args, seeds))


if __name__ == "__main__":
    main()
