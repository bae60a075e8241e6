"""Images per second of one training step: BNN against float twin, NCHW against channels_last, fp32 against auto.

BinaryNet at several widths (or the MNIST BNN, ``--model mnist_bnn``).

A step is ``zero_grad`` + forward + cross-entropy + backward + ``torch.optim.SGD(momentum=0.9)`` step, the same
optimizer for every variant so that the comparison isolates the network: the BNN (``BinaryNet(width)``, bop mode:
binary weights used as is, STE sign on every input but the first) against ``BinaryNet(width, binarize=False)`` (the
same shapes with ``nn.Conv2d`` / ``nn.Linear`` and hardtanh where the BNN has its sign). Each variant is a network
(``--networks bnn,float``), a memory format (``--formats``: ``nchw`` builds the model with ``channels_last=False``
and feeds NCHW batches; ``channels_last``, the models' default, feeds channels_last batches as the training engine's
loader does) and a precision (``--precisions``: ``32``, ``bf16-mixed`` (autocast) or ``auto``, resolved as a
training run resolves it, see ``torchbop.training.precision``). All variants run in one process on one fixed batch,
interleaved step by step (the order alternating each round), so that a noisy machine affects them alike; the table
reports the median of the timed steps, images/s, and the time of each variant relative to the first one of its
network (``vs first``), for wall time and for the process's CPU time (which is less disturbed when other processes
share the machine); with both networks, also BNN time / float time (target <= 1.10).

    python benchmarks/train_step.py [--model binarynet|mnist_bnn] [--widths 1.0,0.25] [--batch-size 50]
                                    [--networks bnn,float] [--formats channels_last] [--precisions 32]
                                    [--steps 8] [--warmup 2] [--threads N] [--device cpu|cuda] [--profile]
    # the issue-8 table: fp32 against auto, NCHW against channels_last, BNN only
    python benchmarks/train_step.py --model mnist_bnn --batch-size 100 --networks bnn \
        --formats nchw,channels_last --precisions 32,auto,bf16-mixed --steps 20
    python benchmarks/train_step.py --widths 0.125 --batch-size 100 --networks bnn \
        --formats nchw,channels_last --precisions 32,auto,bf16-mixed

``--profile`` also runs ``torch.profiler`` on a few steps of each network at the smallest width (first format and
precision) and prints the costliest operators side by side, which shows what the binarization costs:
``aten::sign``, ``aten::sign_`` and an ``aten::add_`` (the forward sign, three memory-bound passes) and
``aten::hardtanh_backward`` (the fused STE backward), against ``aten::clamp`` and ``aten::hardtanh_backward`` for the
twin's hardtanh.
Timing: ``time.perf_counter`` and ``time.process_time`` around the step (with ``torch.cuda.synchronize`` on CUDA),
warm-up steps excluded.
A benchmark, not a test. At the defaults it takes about a minute on a 2-core CPU.

Measured (torch 2.13.0+cpu, 2-core VM shared with other jobs, ``--threads 1``, three runs, NCHW): BNN / float CPU
time 0.99-1.03 at width 1 (about 1.2 s per step) and 1.01-1.02 at width 0.25 (about 115 ms per step); wall-time
ratios spread 0.95-1.04. The binarization costs about 1.3 ms per step at width 0.25 (forward sign 3.3 ms against the
twin's clamp 2.0 ms; the STE backward is as fast as hardtanh's). A naive quantizer (``torch.where(x >= 0, 1., -1.)``
forward, ``grad * (x.abs() <= 1)`` backward) measured 1.16-1.25 at width 0.25. With 2 threads on the busy VM the wall
times varied by more than the effect measured.

Formats and precisions (same VM, an AMD EPYC with AVX2 only, so ``auto`` resolves to 32 and bf16 is emulated; 2
threads, quiet machine, batch 100, BNN): MNIST BNN 86.8 ms per step in NCHW, 55.7 ms in channels_last (1,152 against
1,794 images/s, 0.64x the time); BinaryNet at width 1/8 89.2 against 71.5 ms (0.80x); ``auto`` measured as 32 (it is
32 here); bf16-mixed 6-10x slower than fp32 on this CPU (no native bf16). With 1 thread (CPU time, a busy machine):
0.68x (MNIST) and 0.74x (width 1/8).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

from torchbop.models import BinaryNet, MnistBNN
from torchbop.models.memory_format import to_channels_last
from torchbop.training.precision import describe_resolution, resolve_precision

FORMATS = ("nchw", "channels_last")


def make_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, precision: str = "32"):
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    bf16 = precision == "bf16-mixed"

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
            logits = model(x)
        F.cross_entropy(logits.float(), y).backward()
        opt.step()

    return step


def build(args: argparse.Namespace, width: float, network: str, fmt: str) -> nn.Module:
    channels_last = fmt == "channels_last"
    if args.model == "mnist_bnn":
        if network == "float":
            raise SystemExit("--model mnist_bnn has no float twin: use --networks bnn")
        return MnistBNN(channels_last=channels_last)
    return BinaryNet(width=width, binarize=network == "bnn", channels_last=channels_last)


def batch(args: argparse.Namespace, device: torch.device, fmt: str) -> tuple[torch.Tensor, torch.Tensor]:
    """One fixed batch in [-1, 1]; channels_last as the training engine's loader makes it for such a model."""
    g = torch.Generator().manual_seed(0)
    shape = (args.batch_size, 1, 28, 28) if args.model == "mnist_bnn" else (args.batch_size, 3, 32, 32)
    x = (torch.rand(shape, generator=g) * 2 - 1).to(device)
    y = torch.randint(0, 10, (args.batch_size,), generator=g).to(device)
    if fmt == "channels_last":
        x = to_channels_last(x)
    return x, y


def variants(args: argparse.Namespace) -> list[tuple[str, str, str]]:
    """(network, format, precision) in table order."""
    return [(n, f, p) for n in args.networks for f in args.formats for p in args.precisions]


def timed(step, device: torch.device) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of one call of ``step``."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0, c0 = time.perf_counter(), time.process_time()
    step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t0, time.process_time() - c0


def bench_width(
    width: float, args: argparse.Namespace, device: torch.device
) -> dict[tuple[str, str, str], tuple[float, float]]:
    """Median (wall, CPU) seconds per step of every variant at ``width``, interleaved."""
    steps = {}
    for network, fmt, precision in variants(args):
        torch.manual_seed(0)
        x, y = batch(args, device, fmt)
        steps[(network, fmt, precision)] = make_step(
            build(args, width, network, fmt).to(device), x, y, args.resolved[precision]
        )
    times: dict[tuple[str, str, str], list[tuple[float, float]]] = {key: [] for key in steps}
    for i in range(args.warmup + args.steps):
        order = list(steps) if i % 2 == 0 else list(reversed(steps))
        for key in order:
            t = timed(steps[key], device)
            if i >= args.warmup:
                times[key].append(t)
    return {
        key: (statistics.median(t[0] for t in ts), statistics.median(t[1] for t in ts)) for key, ts in times.items()
    }


def profile_width(width: float, args: argparse.Namespace, device: torch.device, rows: int = 14) -> None:
    """Self time per step of the costliest operators, BNN and float twin side by side."""
    from torch.profiler import ProfilerActivity, profile

    fmt, precision = args.formats[0], args.resolved[args.precisions[0]]
    x, y = batch(args, device, fmt)
    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    n_steps = 3
    per_op: dict[str, dict[str, float]] = {}  # network -> operator -> ms per step
    for name in args.networks:
        step = make_step(build(args, width, name, fmt).to(device), x, y, precision)
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
    ops = sorted(set().union(*per_op.values()), key=lambda k: -max(d.get(k, 0.0) for d in per_op.values()))
    print(
        f"\nprofile at width {width}, {fmt}, precision {precision}: self {'device' if cuda else 'CPU'} ms per step "
        f"({n_steps} steps)"
    )
    print(f"{'operator':>40}" + "".join(f" {name:>8}" for name in per_op))
    for op in ops[:rows]:
        print(f"{op:>40}" + "".join(f" {d.get(op, 0.0):8.2f}" for d in per_op.values()))
    print(f"{'total':>40}" + "".join(f" {sum(d.values()):8.2f}" for d in per_op.values()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="binarynet", choices=("binarynet", "mnist_bnn"))
    parser.add_argument("--widths", default="1.0,0.25", help="comma-separated width multipliers (BinaryNet)")
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--networks", default="bnn,float", help="bnn and/or float (BinaryNet's float twin)")
    parser.add_argument("--formats", default="channels_last", help="nchw and/or channels_last")
    parser.add_argument("--precisions", default="32", help="32, bf16-mixed and/or auto")
    parser.add_argument("--steps", type=int, default=8, help="timed steps per variant and width")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per variant and width")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--profile", action="store_true", help="profile operators at the smallest width")
    args = parser.parse_args()
    widths = [float(w) for w in args.widths.split(",")] if args.model == "binarynet" else [1.0]
    args.networks = [n.strip() for n in args.networks.split(",")]
    args.formats = [f.strip() for f in args.formats.split(",")]
    args.precisions = [p.strip() for p in args.precisions.split(",")]
    for name, values, known in (
        ("networks", args.networks, ("bnn", "float")),
        ("formats", args.formats, FORMATS),
        ("precisions", args.precisions, ("32", "bf16-mixed", "auto")),
    ):
        if not values or any(v not in known for v in values):
            parser.error(f"--{name}: expected a comma-separated list of {', '.join(known)}")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA device")
    args.resolved = {p: resolve_precision(p, device.type) for p in args.precisions}

    print(
        f"torch {torch.__version__}, device {device}, threads {torch.get_num_threads()}, model {args.model}, "
        f"batch {args.batch_size}, {args.steps} timed steps after {args.warmup} warm-up (median); "
        + describe_resolution("auto", device.type)
    )
    both = set(args.networks) == {"bnn", "float"}
    print(
        f"{'width':>6} {'network':>8} {'format':>13} {'precision':>10} {'ms/step':>9} {'images/s':>9} "
        f"{'cpu ms/step':>12} {'vs first (wall, cpu)':>21}" + ("   BNN/float (wall, cpu)" if both else "")
    )
    for width in widths:
        med = bench_width(width, args, device)
        for network, fmt, precision in variants(args):
            wall, cpu = med[(network, fmt, precision)]
            first = med[next(k for k in med if k[0] == network)]
            versus = f"{wall / first[0]:.3f}, {cpu / first[1]:.3f}"
            shown = ""
            if both and network == "bnn":
                twin = med[("float", fmt, precision)]
                shown = f"   {wall / twin[0]:.3f}, {cpu / twin[1]:.3f}"
            name = precision if precision != "auto" else f"auto={args.resolved['auto']}"
            print(
                f"{width:6.3g} {network:>8} {fmt:>13} {name:>10} {wall * 1e3:9.1f} {args.batch_size / wall:9.1f} "
                f"{cpu * 1e3:12.1f} {versus:>21}{shown}"
            )
    if args.profile:
        profile_width(min(widths), args, device)


if __name__ == "__main__":
    main()
