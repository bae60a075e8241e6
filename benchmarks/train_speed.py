"""The training engine against a lean hand-written loop: images/s of ``torchbop.training.train`` over a 15-line loop.

Both train the same network (``create_model(model, mode="bop", **kwargs)``, channels_last where the model computes
so) with the same ``CompositeOptimizer(Bop, Adam)``, on the same batches (:class:`~torchbop.data.DeviceLoader`,
channels_last), for one epoch of ``--images`` random uint8 images of the dataset's shape (the timing does not depend on
pixel values). The engine is ``train(config)`` as ``torchbop train --recipe mnist`` runs it (the recipe, loggers on,
``--no-progress``), timed by its own ``train_images_per_s`` (the training batches, from the first to the last,
validation excluded); the lean loop is timed the same way, over its whole epoch::

    for x, y in loader:
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

The ratio ``engine / lean`` of images/s is the engine's speed; ``1 - ratio`` its own cost as a share of a step (the
flip counter, epoch sums, logging cadence, checkpoints). Runs are interleaved (lean, engine, lean, engine, ...) and
the best of ``--repeats`` of each is kept, at each ``--threads`` count. Issue 22's targets: ratio >= 0.95 for the MNIST
BNN at batch 100 and for BinaryNet at width 1/8.

    python benchmarks/train_speed.py [--model mnist_bnn|binarynet] [--width 0.125] [--images 6000]
        [--threads 1,2] [--repeats 3] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from torchbop.data import DeviceLoader
from torchbop.models import create_model
from torchbop.models.memory_format import input_memory_format
from torchbop.nn import split_binary_params
from torchbop.optim import Bop, CompositeOptimizer
from torchbop.training import load_recipe, train

SHAPES = {"mnist_bnn": ("mnist", (1, 28, 28)), "binarynet": ("cifar10", (3, 32, 32))}


def make_data(model: str, images: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (images, *SHAPES[model][1]), dtype=torch.uint8, generator=g)
    y = torch.randint(0, 10, (images,), generator=g)
    return {"train": (x, y), "test": (x[:1000], y[:1000])}


def model_kwargs(args: argparse.Namespace) -> dict:
    return {"width": args.width} if args.model == "binarynet" else {}


def lean_loop(args: argparse.Namespace, data: dict) -> float:
    """Images/s of the 15-line loop of the module docstring (the recipe's gamma, tau and lr)."""
    torch.manual_seed(0)
    model = create_model(args.model, mode="bop", **model_kwargs(args)).train()
    binary, other = split_binary_params(model)
    optimizer = CompositeOptimizer(
        Bop(binary, gamma=1e-3, threshold=1e-6), torch.optim.Adam(other, lr=0.01), model=model
    )
    loader = DeviceLoader(
        *data["train"], args.batch_size, seed=0, drop_last=True, memory_format=input_memory_format(model)
    )
    start = time.perf_counter()
    for x, y in loader:
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return len(loader) * args.batch_size / (time.perf_counter() - start)


def engine(args: argparse.Namespace, data: dict) -> float:
    """``train(config)`` of the mnist recipe (one epoch, this model), loggers on, as the CLI runs it."""
    dataset = SHAPES[args.model][0]
    overrides = [
        f"model={args.model}",
        f"dataset={dataset}",
        "epochs=1",
        "progress_bar=false",
        f"batch_size={args.batch_size}",
        "recalibrate_bn='off'",
        "accelerator=cpu",
    ]
    overrides += [f"model_kwargs.{k}={v}" for k, v in model_kwargs(args).items()]
    with tempfile.TemporaryDirectory() as out:
        config = load_recipe("mnist", [*overrides, f"out={out}/run"])
        return float(train(config, data=data)["train_images_per_s"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=sorted(SHAPES), default="mnist_bnn")
    parser.add_argument("--width", type=float, default=0.125, help="binarynet's width multiplier")
    parser.add_argument("--images", type=int, default=6000)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    data = make_data(args.model, args.images)
    rows = []
    for threads in [int(t) for t in args.threads.split(",")]:
        torch.set_num_threads(threads)
        lean, eng = [], []
        for _ in range(args.repeats):
            lean.append(lean_loop(args, data))
            eng.append(engine(args, data))
        row = {
            "model": args.model,
            "threads": threads,
            "lean_images_per_s": max(lean),
            "engine_images_per_s": max(eng),
            "ratio": max(eng) / max(lean),
        }
        row["engine_share_of_step"] = 1 - row["ratio"]
        rows.append(row)
        print(
            f"{args.model} threads {threads}: lean {row['lean_images_per_s']:.0f} images/s, engine "
            f"{row['engine_images_per_s']:.0f} images/s, ratio {row['ratio']:.3f} (engine's own cost "
            f"{100 * row['engine_share_of_step']:.1f}% of a step)",
            flush=True,
        )
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
