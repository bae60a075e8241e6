"""Images per second of one training step of a residual BNN: Bop against latent weights against the float twin.

Bi-Real Net-18 with the CIFAR-10 stem by default (``--model`` takes any torchbop model with a CIFAR-10 stem:
``reactnet_a``, ``binary_resnet18``, ``quicknet``...), at one or more widths, three ways in one process:

* ``bop``: the network in mode ``"bop"`` (+-1 weights used as is), ``CompositeOptimizer(Bop, Adam)`` as
  ``torchbop train --recipe cifar10_bireal`` builds it (``torchbop.optim.bop_optimizer`` routing);
* ``latent``: mode ``"latent"`` (real latent weights binarized by the straight-through sign in every forward), Adam
  over every parameter and the clip of the latent weights to [-1, 1] after the step (the AdamBNN-style baseline,
  recipe ``cifar10_bireal_latent``);
* ``float``: the float twin: the latent network with every quantizer removed (``input_quantizer`` and
  ``weight_quantizer`` set to None, RSign's sign left out): the same convolutions on real numbers, trained by Adam.

A step is ``zero_grad`` + forward + cross-entropy + backward + optimizer step (+ clip for ``latent``). The variants run
interleaved step by step on one fixed channels_last batch (the order alternating each round), so that a noisy machine
affects them alike; the table shows the median wall-clock and CPU time per step, images/s, and each variant's time
relative to ``bop``. A benchmark, not a test.

    python benchmarks/family_train_step.py [--model bireal_net18] [--widths 0.25,0.5] [--batch-size 50]
                                           [--steps 8] [--warmup 2] [--threads N]
"""

from __future__ import annotations

import argparse
import statistics

import torch
import torch.nn.functional as F
from torch import nn
from train_step import timed  # benchmarks/train_step.py: wall and CPU seconds of one call

from torchbop.models import create_model
from torchbop.models.memory_format import to_channels_last
from torchbop.nn import clip_latent_weights_, named_binary_layers, split_binary_params
from torchbop.optim import Bop, CompositeOptimizer

VARIANTS = ("bop", "latent", "float")


def build(model_name: str, width: float, variant: str) -> nn.Module:
    torch.manual_seed(0)
    model = create_model(model_name, stem="cifar10", width=width, mode="bop" if variant == "bop" else "latent")
    if variant == "float":
        for _, layer in named_binary_layers(model):
            layer.input_quantizer = None
            layer.weight_quantizer = None
        for module in model.modules():
            if hasattr(module, "quantizer") and hasattr(module, "threshold"):  # RSign: keep the shift, drop the sign
                module.quantizer = nn.Identity()
    return model


def make_step(model: nn.Module, variant: str, x: torch.Tensor, y: torch.Tensor):
    if variant == "bop":
        binary, other = split_binary_params(model)
        optimizer = CompositeOptimizer(
            Bop(binary, gamma=1e-4, threshold=1e-8), torch.optim.Adam(other, lr=0.01), model=model
        )
    else:
        optimizer = torch.optim.Adam(model.parameters(), lr=1.25e-3)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
        if variant == "latent":
            clip_latent_weights_(model)

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="bireal_net18")
    parser.add_argument("--widths", default="0.25,0.5", help="comma-separated width multipliers")
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--steps", type=int, default=8, help="timed steps per variant and width")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per variant and width")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    x = to_channels_last(torch.rand(args.batch_size, 3, 32, 32, generator=g) * 2 - 1)
    y = torch.randint(0, 10, (args.batch_size,), generator=g)
    print(
        f"torch {torch.__version__}, threads {torch.get_num_threads()}, model {args.model} (CIFAR-10 stem), "
        f"batch {args.batch_size}, {args.steps} timed steps after {args.warmup} warm-up (median)"
    )
    print(
        f"{'width':>6} {'variant':>8} {'ms/step':>9} {'images/s':>9} {'cpu ms/step':>12} {'time / bop (wall, cpu)':>23}"
    )
    for width in (float(w) for w in args.widths.split(",")):
        steps = {v: make_step(build(args.model, width, v), v, x, y) for v in VARIANTS}
        times: dict[str, list[tuple[float, float]]] = {v: [] for v in VARIANTS}
        for i in range(args.warmup + args.steps):
            for variant in VARIANTS if i % 2 == 0 else VARIANTS[::-1]:
                t = timed(steps[variant], x.device)
                if i >= args.warmup:
                    times[variant].append(t)
        med = {v: (statistics.median(t[0] for t in ts), statistics.median(t[1] for t in ts)) for v, ts in times.items()}
        for variant in VARIANTS:
            wall, cpu = med[variant]
            print(
                f"{width:6.3g} {variant:>8} {wall * 1e3:9.1f} {args.batch_size / wall:9.1f} {cpu * 1e3:12.1f} "
                f"{wall / med['bop'][0]:>11.3f}, {cpu / med['bop'][1]:.3f}"
            )


if __name__ == "__main__":
    main()
