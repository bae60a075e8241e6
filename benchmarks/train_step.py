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
costliest operators side by side, which shows what the binarization costs: ``aten::sign``, ``aten::sign_`` and an
``aten::add_`` (the forward sign, three memory-bound passes) and ``aten::hardtanh_backward`` (the fused STE backward),
against ``aten::clamp`` and ``aten::hardtanh_backward`` for the twin's hardtanh.
Timing: ``time.perf_counter`` and ``time.process_time`` around the step (with ``torch.cuda.synchronize`` on CUDA),
warm-up steps excluded.
A benchmark, not a test. At the defaults it takes about a minute on a 2-core CPU.

Measured (torch 2.13.0+cpu, 2-core VM shared with other jobs, ``--threads 1``, three runs): BNN / float CPU time
0.99-1.03 at width 1 (about 1.2 s per step) and 1.01-1.02 at width 0.25 (about 115 ms per step); wall-time ratios
spread 0.95-1.04. The binarization costs about 1.3 ms per step at width 0.25 (forward sign 3.3 ms against the twin's
clamp 2.0 ms; the STE backward is as fast as hardtanh's). A naive quantizer (``torch.where(x >= 0, 1., -1.)`` forward,
``grad * (x.abs() <= 1)`` backward) measured 1.16-1.25 at width 0.25. With 2 threads on the busy VM the wall times
varied by more than the effect measured.
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


def profile_width(width: float, args: argparse.Namespace, device: torch.device, rows: int = 14) -> None:
    """Self time per step of the costliest operators, BNN and float twin side by side."""
    from torch.profiler import ProfilerActivity, profile

    g = torch.Generator().manual_seed(0)
    x = (torch.rand(args.batch_size, 3, 32, 32, generator=g) * 2 - 1).to(device)
    y = torch.randint(0, 10, (args.batch_size,), generator=g).to(device)
    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    n_steps = 3
    per_op: dict[str, dict[str, float]] = {}  # network -> operator -> ms per step
    for name, binarize in (("bnn", True), ("float", False)):
        step = make_step(BinaryNet(width=width, binarize=binarize).to(device), x, y)
        for _ in range(2):
            step()
        with profile(activities=activities) as prof:
            for _ in range(n_steps):
                step()
        per_op[name] = {
            e.key: (e.self_device_time_total if cuda else e.self_cpu_time_total) / n_steps / 1e3
            for e in prof.key_averages()
            if e.key.startswith("aten::") or e.key.endswith("Backward")
        }
    ops = sorted(set(per_op["bnn"]) | set(per_op["float"]), key=lambda k: -max(d.get(k, 0.0) for d in per_op.values()))
    print(f"\nprofile at width {width}: self {'device' if cuda else 'CPU'} ms per step ({n_steps} steps)")
    print(f"{'operator':>40} {'bnn':>8} {'float':>8}")
    for op in ops[:rows]:
        print(f"{op:>40} {per_op['bnn'].get(op, 0.0):8.2f} {per_op['float'].get(op, 0.0):8.2f}")
    print(f"{'total':>40} {sum(per_op['bnn'].values()):8.2f} {sum(per_op['float'].values()):8.2f}")


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
