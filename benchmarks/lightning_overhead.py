"""Lightning's own cost per training step: ``torchbop.training.train`` against a plain loop doing the same steps.

Both loops train the same :class:`~torchbop.training.BinaryClassifier` (same config, same seed, same
``DeviceLoader`` batches): the plain loop calls what Lightning calls per step, without Lightning:

    optimizer.step(closure)   # closure: zero_grad, module.train_forward (forward, loss, accuracy, epoch sums), backward
    flip_counter.after_step() # per-step flip counts, on the device
    epoch sums += batch sums  # on the device

The Lightning loop is ``train(config)`` itself (loggers off unless ``--loggers``: the run's CSV/TensorBoard writes
happen every ``log_every_n_steps`` steps), so its extra time is the Trainer's loop, hooks, callbacks (checkpointing,
throughput, console), ``self.log`` calls and the progress bar if any. The difference per step is Lightning's overhead.
With ``--compile`` it measures each listed mode: ``none`` (eager), ``default`` (``torch.compile``), and on CUDA
``reduce-overhead`` (``torch.compile`` with CUDA graphs; unverified without a GPU).

Method: ``--warmup`` untimed steps (compilation included), then ``--steps`` timed steps between two device syncs,
best of ``--repeats`` runs per loop, the two loops interleaved; random uint8 images of the dataset's shape (the
timing does not depend on pixel values). Prints ms per step and images/s of both loops, the overhead per step and its
share of the Lightning step. ``--model tiny`` (a two-layer binary MLP) makes the arithmetic negligible, so that the
numbers are the loops' own costs.

    python benchmarks/lightning_overhead.py [--device cpu|cuda] [--model binarynet] [--width 0.03125]
        [--batch-size 50] [--steps 200] [--warmup 20] [--repeats 3] [--compile none,default] [--threads N]
        [--loggers] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch

from torchbop.data import DeviceLoader
from torchbop.training import TrainConfig, train
from torchbop.training.module import BinaryClassifier

SHAPES = {"binarynet": ("cifar10", (3, 32, 32)), "mnist_bnn": ("mnist", (28, 28)), "tiny": ("cifar10", (3, 32, 32))}


def tiny_model() -> torch.nn.Module:
    """``--model tiny``: a two-layer binary MLP on CIFAR-10's shape, whose arithmetic costs next to nothing, so that
    a step's time is the loop's own cost (Python, dispatch, launches)."""
    from torch import nn

    from torchbop.nn import BinaryLinear, ShiftBatchNorm1d

    return nn.Sequential(nn.Flatten(), BinaryLinear(3 * 32 * 32, 64, input_quantizer=None), ShiftBatchNorm1d(64),
                         BinaryLinear(64, 10), ShiftBatchNorm1d(10))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Window(L.Callback):
    """Times training steps ``warmup`` to ``warmup + steps - 1`` of the first epoch (device synced at both ends)."""

    def __init__(self, warmup: int, steps: int) -> None:
        self.warmup, self.steps = warmup, steps
        self.seconds = float("nan")
        self._start = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.current_epoch == 0 and batch_idx == self.warmup:
            _sync(pl_module.device)
            self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.current_epoch == 0 and batch_idx == self.warmup + self.steps - 1:
            _sync(pl_module.device)
            self.seconds = time.perf_counter() - self._start


def make_config(args: argparse.Namespace, compile_: bool, out: str) -> TrainConfig:
    dataset, _ = SHAPES[args.model]
    kwargs = {"width": args.width} if args.model == "binarynet" else {}
    return TrainConfig(
        name="overhead", model="binarynet" if args.model == "tiny" else args.model, model_kwargs=kwargs,
        dataset=dataset, augment=dataset == "cifar10",
        batch_size=args.batch_size, epochs=1, gamma=1e-4, threshold=1e-8, lr=0.01, accelerator=args.accelerator,
        devices=1, limit_train_batches=args.warmup + args.steps, limit_eval_batches=0, progress_bar=False,
        log_every_n_steps=args.log_every, out=out, compile=compile_,
    )


def make_data(args: argparse.Namespace) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    _, shape = SHAPES[args.model]
    n = args.batch_size * (args.warmup + args.steps)
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, *shape), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 10, (n,), generator=g)
    return {"train": (images, labels), "test": (images[: args.batch_size], labels[: args.batch_size])}


def lightning_loop(args: argparse.Namespace, compile_: bool, data: dict) -> float:
    window = Window(args.warmup, args.steps)
    with tempfile.TemporaryDirectory() as out:
        L.seed_everything(0, verbose=False)
        model = tiny_model() if args.model == "tiny" else None
        train(make_config(args, compile_, out), data=data, model=model, callbacks=[window], loggers=args.loggers)
    return window.seconds


def plain_loop(args: argparse.Namespace, compile_: bool, data: dict, device: torch.device) -> float:
    L.seed_everything(0, verbose=False)
    config = make_config(args, compile_, "unused")
    module = BinaryClassifier(config, model=tiny_model() if args.model == "tiny" else None).to(device)
    module.train()
    optimizer = module.configure_optimizers()["optimizer"]
    counter = module.flip_counter
    images, labels = data["train"]
    loader = DeviceLoader(images, labels, args.batch_size, augment=config.augment, seed=0, device=device,
                          drop_last=True)
    sums = None
    start = 0.0
    for step, (x, y) in enumerate(loader):
        if step == args.warmup:
            _sync(device)
            start = time.perf_counter()

        def closure() -> torch.Tensor:
            nonlocal sums
            optimizer.zero_grad(set_to_none=True)
            loss, _acc, batch_sums = module.train_forward(x, y)
            sums = batch_sums if sums is None else sums + batch_sums
            loss.backward()
            return loss

        counter.before_step()
        optimizer.step(closure)
        counter.after_step()
        if step == args.warmup + args.steps - 1:
            _sync(device)
            return time.perf_counter() - start
    raise RuntimeError("not enough batches")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--model", default="binarynet", choices=sorted(SHAPES))
    parser.add_argument("--width", type=float, default=1 / 32, help="BinaryNet width (1/32: a tiny model)")
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--steps", type=int, default=200, help="timed steps per run")
    parser.add_argument("--warmup", type=int, default=20, help="untimed steps first (compilation included)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per loop and mode; the best is reported")
    parser.add_argument("--compile", default="none", help="comma-separated: none, default, reduce-overhead")
    parser.add_argument("--log-every", type=int, default=100, help="log_every_n_steps (the cifar10 recipe's 100)")
    parser.add_argument("--loggers", action="store_true", help="write the run's CSV and TensorBoard logs")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    args.accelerator = "gpu" if device.type == "cuda" else device.type
    data = make_data(args)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{torch.get_num_threads()} threads"
    print(f"torch {torch.__version__}, device {device} ({name}); {args.model} width {args.width:g}, batch "
          f"{args.batch_size}, {args.steps} timed steps after {args.warmup}, best of {args.repeats}, loggers "
          f"{'on' if args.loggers else 'off'}")
    print(f"{'compile':>16} {'plain ms/step':>14} {'Lightning ms/step':>18} {'overhead ms':>12} {'share':>6} "
          f"{'plain img/s':>12} {'Lightning img/s':>16}")
    rows: list[dict[str, Any]] = []
    for mode in [m.strip() for m in args.compile.split(",") if m.strip()]:
        compile_ = mode != "none"
        BinaryClassifier.compile_options = {} if mode in ("none", "default") else {"mode": mode}
        plains, lightnings = [], []
        for _ in range(args.repeats):  # interleaved, so that a noisy machine affects both alike
            plains.append(plain_loop(args, compile_, data, device))
            lightnings.append(lightning_loop(args, compile_, data))
        plain, lightning = min(plains) / args.steps, min(lightnings) / args.steps
        row = {"compile": mode, "plain_ms": plain * 1e3, "lightning_ms": lightning * 1e3,
               "overhead_ms": (lightning - plain) * 1e3, "overhead_share": (lightning - plain) / lightning,
               "plain_images_per_s": args.batch_size / plain, "lightning_images_per_s": args.batch_size / lightning}
        rows.append(row)
        print(f"{mode:>16} {row['plain_ms']:>14.3f} {row['lightning_ms']:>18.3f} {row['overhead_ms']:>12.3f} "
              f"{row['overhead_share']:>6.0%} {row['plain_images_per_s']:>12,.0f} "
              f"{row['lightning_images_per_s']:>16,.0f}", flush=True)
    BinaryClassifier.compile_options = {}
    if args.json:
        Path(args.json).write_text(json.dumps({"args": {k: v for k, v in vars(args).items()}, "rows": rows},
                                              indent=2))


if __name__ == "__main__":
    main()
