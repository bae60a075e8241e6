"""Time one optimizer step on BinaryNet's binary weight shapes (10,352,000 weights), Bop against its baselines.

All optimizers run in one process on the same shapes, interleaved round by round, so that a noisy machine affects
them alike; the table reports the median of the rounds and each time as a ratio to SGD with momentum (foreach), the
natural baseline: both move about five fp32 streams per weight (Bop reads w, g, m and writes w, m; SGD reads w, g,
buf and writes w, buf), which is the physical limit of a memory-bound step. Bop's default ``nonfinite="raise"``
reads the gradients once more before the step (so that a bad gradient changes nothing); ``nonfinite="mask"`` does
that check inside the fused kernel. SGD checks nothing.

    python benchmarks/optimizer_step.py [--rounds 20] [--threads N] [--device cpu|cuda] [--width 1.0]

Timing: ``time.perf_counter`` around ``step()`` (with ``torch.cuda.synchronize`` on CUDA), gradients fixed, warm-up
rounds (which include the one-off compilation of ``fused=True``) excluded. A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from torchbop.optim import Bop
from torchbop.optim.bop import _single_tensor_bop


def binarynet_weight_shapes(width: float = 1.0) -> list[tuple[int, ...]]:
    """The binary weight shapes of BinaryNet (SPEC section 4); 10,352,000 weights at width 1."""
    c = [max(1, round(n * width)) for n in (128, 256, 512)]
    d = max(1, round(1024 * width))
    return [
        (c[0], 3, 3, 3), (c[0], c[0], 3, 3), (c[1], c[0], 3, 3), (c[1], c[1], 3, 3),
        (c[2], c[1], 3, 3), (c[2], c[2], 3, 3), (d, c[2] * 9), (d, d), (10, d),
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
            _single_tensor_bop(ps, [p.grad for p in ps], ms, gamma=group["lr"], threshold=group["threshold"],
                               tie_break="larq")


def make_params(shapes, device, seed):
    g = torch.Generator().manual_seed(seed)
    params = []
    for s in shapes:
        p = torch.nn.Parameter((torch.randint(0, 2, s, generator=g) * 2 - 1).float().to(device))
        p.grad = (torch.randn(s, generator=g) * 1e-3).to(device)
        params.append(p)
    return params


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--no-fused", action="store_true", help="skip Bop(fused=True) (needs a C++ compiler on CPU)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    shapes = binarynet_weight_shapes(args.width)
    n = sum(torch.Size(s).numel() for s in shapes)

    candidates = {
        "SGD(momentum=0.9, foreach)": lambda ps: torch.optim.SGD(ps, lr=1e-3, momentum=0.9, foreach=True),
        "Adam(fused)": lambda ps: torch.optim.Adam(ps, lr=1e-3, fused=True),
        "naive Bop loop": lambda ps: NaiveBop(ps),
        "Bop(foreach)": lambda ps: Bop(ps, foreach=True),
    }
    if not args.no_fused:
        candidates["Bop(fused)"] = lambda ps: Bop(ps, fused=True)
        # same kernel; non-finite gradients are masked entry by entry in the kernel instead of screened beforehand
        candidates["Bop(fused, nonfinite=mask)"] = lambda ps: Bop(ps, fused=True, nonfinite="mask")
    optimizers = {name: make(make_params(shapes, device, seed=i)) for i, (name, make) in enumerate(candidates.items())}

    def timed(opt) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    times: dict[str, list[float]] = {name: [] for name in optimizers}
    for r in range(args.warmup + args.rounds):
        for name, opt in optimizers.items():
            t = timed(opt)
            if r >= args.warmup:
                times[name].append(t)

    base = statistics.median(times["SGD(momentum=0.9, foreach)"])
    print(f"one optimizer step on {n:,} binary weights ({len(shapes)} tensors), device {device}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, median of {args.rounds} rounds")
    print(f"{'optimizer':<32}{'ms/step':>10}{'vs SGD':>9}{'GB/s (5 streams)':>18}")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"{name:<32}{med * 1e3:>10.2f}{med / base:>8.2f}x{5 * 4 * n / med / 1e9:>18.1f}")


if __name__ == "__main__":
    main()
