"""Time one optimizer step on BinaryNet's binary weight shapes (10,352,000 weights), Bop against its baselines.

All optimizers run in one process on the same shapes, interleaved round by round, so that a noisy machine affects
them alike; the table reports the median of the rounds and each time as a ratio to SGD with momentum (foreach), the
natural baseline. A step is memory-bound, so count the fp32 streams it moves per weight: SGD reads w, g, buf twice
over and writes w, buf (``buf *= 0.9; buf += g; w -= lr buf``: 8 streams); Bop's fused kernel reads w, g, m and
writes m, w (5 streams, hence the limit 5/8 = 0.625x), and its default ``nonfinite="raise"`` first reads the
gradients once more (one summing pass, so that a bad gradient changes nothing: 6 streams, 0.75x). ``nonfinite="mask"``
checks inside the kernel instead. Bop2ndOrder's kernel reads w, g, m, v and writes m, v, w (7 streams). CEMA has
no fused kernel (eager only): its chunks read w, g, m, I and write m, I, w, with the flip test in cache.

Rows: ``Bop()`` is the default (``fused=None``: the compiled kernel where ``torch.compile`` works, which the first
line of the output reports); ``Bop(fused=False)`` is the eager path the default falls back to without a compiler;
the naive loop is the reference implementation, the snippet BNN code usually copies. Two rows take ``Bop()`` apart:
its ``nonfinite="raise"`` check alone (one read of the gradients) and its fused kernel alone (the step without the
check); on a machine whose reads are the limit, their sum is the floor of ``Bop()``.

    python benchmarks/optimizer_step.py [--rounds 20] [--threads N] [--device cpu|cuda] [--clock wall|cpu]

Timing: ``time.perf_counter`` around ``step()`` (with ``torch.cuda.synchronize`` on CUDA), or with ``--clock cpu``
the process's CPU time (``time.process_time``: on a shared machine, time spent descheduled does not count). CPU time
is the step's cost at one thread; at more it adds up the threads' work, and counts threads spinning at barriers
unless ``OMP_WAIT_POLICY=PASSIVE`` is set. Gradients are fixed; warm-up rounds, which include the one-off
compilations, are excluded. A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable

import torch

from torchbop.optim import CEMA, Bop, Bop2ndOrder, _fused
from torchbop.optim.bop import _fused_bop, _nonfinite_entries, _single_tensor_bop

BASELINE = "SGD(momentum=0.9, foreach)"


def binarynet_weight_shapes(width: float = 1.0) -> list[tuple[int, ...]]:
    """The binary weight shapes of BinaryNet (SPEC section 4); 10,352,000 weights at width 1."""
    c = [max(1, round(n * width)) for n in (128, 256, 512)]
    d = max(1, round(1024 * width))
    return [
        (c[0], 3, 3, 3),
        (c[0], c[0], 3, 3),
        (c[1], c[0], 3, 3),
        (c[1], c[1], 3, 3),
        (c[2], c[1], 3, 3),
        (c[2], c[2], 3, 3),
        (d, c[2] * 9),
        (d, d),
        (10, d),
    ]


class NaiveBop(torch.optim.Optimizer):
    """The snippet BNN researchers copy: a Python loop over parameters with the reference arithmetic."""

    def __init__(self, params, gamma=1e-4, threshold=1e-8):
        super().__init__(params, dict(lr=gamma, threshold=threshold))

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            ps = [p for p in group["params"] if p.grad is not None]
            ms = [self.state[p].setdefault("m", torch.zeros_like(p)) for p in ps]
            _single_tensor_bop(
                ps, [p.grad for p in ps], ms, gamma=group["lr"], threshold=group["threshold"], tie_break="larq"
            )


def make_params(shapes, device, seed):
    g = torch.Generator().manual_seed(seed)
    params = []
    for s in shapes:
        p = torch.nn.Parameter((torch.randint(0, 2, s, generator=g) * 2 - 1).float().to(device))
        p.grad = (torch.randn(s, generator=g) * 1e-3).to(device)
        params.append(p)
    return params


class Part:
    """One part of ``Bop()``'s step as something with a ``step()``: ``part(params, grads, exp_avgs)``."""

    def __init__(self, params, part):
        self.params, self.part = params, part
        self.exp_avgs = [torch.zeros_like(p) for p in params]

    @torch.no_grad()
    def step(self):
        self.part(self.params, [p.grad for p in self.params], self.exp_avgs)


def check_alone(params, grads, exp_avgs):
    _nonfinite_entries(grads, params[0].device)


def kernel_alone(params, grads, exp_avgs):
    _fused_bop(params, grads, exp_avgs, gamma=1e-4, threshold=1e-8, tie_break="larq", fused=None)


def candidates(skip_fused: bool) -> dict[str, Callable]:
    rows: dict[str, Callable] = {
        BASELINE: lambda ps: torch.optim.SGD(ps, lr=1e-3, momentum=0.9, foreach=True),
        "Adam(fused)": lambda ps: torch.optim.Adam(ps, lr=1e-3, fused=True),
        "naive Bop loop (reference)": lambda ps: NaiveBop(ps),
        "Bop() (default)": lambda ps: Bop(ps),
        "Bop(fused=False) (eager)": lambda ps: Bop(ps, fused=False),
    }
    if not skip_fused:
        rows["  Bop(): the check alone"] = lambda ps: Part(ps, check_alone)
        rows["  Bop(): the kernel alone"] = lambda ps: Part(ps, kernel_alone)
        rows["Bop(fused=True, nonfinite=mask)"] = lambda ps: Bop(ps, fused=True, nonfinite="mask")
    rows["Bop2ndOrder() (default)"] = lambda ps: Bop2ndOrder(ps)
    rows["Bop2ndOrder(fused=False) (eager)"] = lambda ps: Bop2ndOrder(ps, fused=False)
    rows["CEMA() (eager, no fused kernel)"] = lambda ps: CEMA(ps, gamma=1e-4, alpha=1e-3)
    rows["CEMA(foreach=False) (reference)"] = lambda ps: CEMA(ps, gamma=1e-4, alpha=1e-3, foreach=False)
    return rows


def default_path(device: torch.device) -> str:
    """What ``fused=None`` chose for fp32 tensors on ``device`` (after the warm-up rounds decided it)."""
    key = ("bop", device.type, torch.float32, torch.float32, torch.float32)
    if key not in _fused._support:
        return "eager (no tensor large enough for the kernel)"
    reason = _fused._support[key]
    return "fused (torch.compile kernel)" if reason is None else f"eager ({reason})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall")
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--no-fused", action="store_true", help="skip the explicit fused=True rows")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)  # before anything compiles: kernels are built for a thread count
    device = torch.device(args.device)
    shapes = binarynet_weight_shapes(args.width)
    n = sum(torch.Size(s).numel() for s in shapes)
    clock = time.process_time if args.clock == "cpu" else time.perf_counter

    rows = candidates(args.no_fused)
    optimizers = {name: make(make_params(shapes, device, seed=i)) for i, (name, make) in enumerate(rows.items())}

    def timed(opt) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = clock()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return clock() - t0

    times: dict[str, list[float]] = {name: [] for name in optimizers}
    for r in range(args.warmup + args.rounds):
        for name, opt in optimizers.items():
            t = timed(opt)
            if r >= args.warmup:
                times[name].append(t)

    base = statistics.median(times[BASELINE])
    print(
        f"one optimizer step on {n:,} binary weights ({len(shapes)} tensors), device {device}, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.clock} clock, median of "
        f"{args.rounds} rounds; Bop() took the {default_path(device)} path"
    )
    print(f"{'optimizer':<36}{'ms/step':>10}{'vs SGD':>9}{'min vs SGD':>12}")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"{name:<36}{med * 1e3:>10.2f}{med / base:>8.2f}x{min(ts) / min(times[BASELINE]):>11.2f}x")


if __name__ == "__main__":
    main()
