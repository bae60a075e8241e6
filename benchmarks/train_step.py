"""Images per second of one BinaryNet training step, the BNN against its float twin, at several widths.

A step is ``zero_grad`` + forward + cross-entropy + backward + ``torch.optim.SGD(momentum=0.9)`` step, the same
optimizer for both networks so that the comparison isolates the network: the BNN (``BinaryNet(width)``, bop mode:
binary weights used as is, STE sign on every input but the first) against ``BinaryNet(width, binarize=False)`` (the
same shapes with ``nn.Conv2d`` / ``nn.Linear`` and hardtanh where the BNN has its sign). Both run in one process on
one fixed batch, interleaved step by step (the order alternating each round), so that a noisy machine affects them
alike; the table reports the median of the timed steps and the ratio BNN time / float time (target <= 1.10), for wall
time and for the process's CPU time (which is less disturbed when other processes share the machine).

    python benchmarks/train_step.py [--widths 1.0,0.25] [--batch-size 50] [--steps 8] [--warmup 2] [--threads N]
                                    [--device cpu|cuda] [--profile]

``--profile`` also runs ``torch.profiler`` on a few steps of each network at the smallest width and prints the
operators that take the most time, which shows what the binarization costs (sign, its STE backward, padding).
Timing: ``time.perf_counter`` and ``time.process_time`` around the step (with ``torch.cuda.synchronize`` on CUDA),
warm-up steps excluded.
A benchmark, not a test. At the defaults it takes about a minute on a 2-core CPU.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

from torchbop.models import BinaryNet


def make_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor):
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()

    return step


def timed(step, device: torch.device) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of one call of ``step``."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0, c0 = time.perf_counter(), time.process_time()
    step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t0, time.process_time() - c0


def bench_width(width: float, args: argparse.Namespace, device: torch.device) -> dict[str, tuple[float, float]]:
    """Median (wall, CPU) seconds per step of the BNN and its float twin at ``width``, interleaved."""
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(args.batch_size, 3, 32, 32, generator=g) * 2 - 1).to(device)
    y = torch.randint(0, 10, (args.batch_size,), generator=g).to(device)
    torch.manual_seed(0)
    steps = {
        "bnn": make_step(BinaryNet(width=width).to(device), x, y),
        "float": make_step(BinaryNet(width=width, binarize=False).to(device), x, y),
    }
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in steps}
    for i in range(args.warmup + args.steps):
        order = list(steps) if i % 2 == 0 else list(reversed(steps))
        for name in order:
            t = timed(steps[name], device)
            if i >= args.warmup:
                times[name].append(t)
    return {
        name: (statistics.median(t[0] for t in ts), statistics.median(t[1] for t in ts)) for name, ts in times.items()
    }


def profile_width(width: float, args: argparse.Namespace, device: torch.device, rows: int = 12) -> None:
    from torch.profiler import ProfilerActivity, profile

    g = torch.Generator().manual_seed(0)
    x = (torch.rand(args.batch_size, 3, 32, 32, generator=g) * 2 - 1).to(device)
    y = torch.randint(0, 10, (args.batch_size,), generator=g).to(device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    for name, binarize in (("bnn", True), ("float", False)):
        step = make_step(BinaryNet(width=width, binarize=binarize).to(device), x, y)
        for _ in range(2):
            step()
        with profile(activities=activities) as prof:
            for _ in range(3):
                step()
        print(f"\n--- profile: {name}, width {width}, 3 steps ---")
        print(prof.key_averages().table(sort_by=sort, row_limit=rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--widths", default="1.0,0.25", help="comma-separated width multipliers")
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--steps", type=int, default=8, help="timed steps per network and width")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per network and width")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--profile", action="store_true", help="profile operators at the smallest width")
    args = parser.parse_args()
    widths = [float(w) for w in args.widths.split(",")]
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    print(
        f"torch {torch.__version__}, device {device}, threads {torch.get_num_threads()}, batch {args.batch_size}, "
        f"{args.steps} timed steps after {args.warmup} warm-up (median)"
    )
    print(f"{'width':>6} {'network':>8} {'ms/step':>9} {'images/s':>9} {'cpu ms/step':>12}   BNN/float (wall, cpu)")
    for width in widths:
        med = bench_width(width, args, device)
        ratios = [med["bnn"][k] / med["float"][k] for k in (0, 1)]
        for name in ("bnn", "float"):
            wall, cpu = med[name]
            shown = f"{ratios[0]:.3f}, {ratios[1]:.3f}" if name == "bnn" else ""
            print(f"{width:6.3g} {name:>8} {wall * 1e3:9.1f} {args.batch_size / wall:9.1f} {cpu * 1e3:12.1f}   {shown}")
    if args.profile:
        profile_width(min(widths), args, device)


if __name__ == "__main__":
    main()
