"""Inference throughput of a packed BNN against the same network in fp32 eager, and their file sizes.

What is timed: ``model(x)`` on a batch of images in [-1, 1] under ``torch.inference_mode()``, for

* fp32 eager: the torchbop model in eval mode (its binary layers are float32 convolutions of +-1 values);
* packed: :func:`torchbop.load_packed` of the file :func:`torchbop.deploy.export` wrote for that model: binary layers
  as XNOR-popcount on packed bits (the C kernel, ``--backend kernel``) or as float products of +-1 (``torch``).

Both compute the same predictions (checked on each batch before timing). Method: for each (threads, batch size),
one warm-up call of each, then ``--rounds`` rounds, each timing both once in alternating order (interleaved, so
that both see the same machine load), ``time.perf_counter`` around a number of calls; images/s from the median
round (``--clock cpu``: CPU time of the process instead, for a machine shared with other jobs; with 2 threads it
counts both threads' time, so images/s is then per CPU-second). The number of calls is chosen so that one timing
lasts about 0.3 s. Weights are random (+-1) and the batch norms get statistics from one train-mode pass: speed does
not depend on the values. Prints the torch version, CPU, then per row images/s of both and the ratio, then the size of the
packed file against ``torch.save(model.state_dict())``.

    python benchmarks/inference.py [--model binarynet|mnist_bnn] [--width 1.0] [--batches 1 64] [--threads 1 2]
                                   [--rounds 7] [--backend kernel|torch] [--clock wall|cpu]
"""

from __future__ import annotations

import argparse
import io
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from torchbop.deploy import export, load_packed
from torchbop.models import create_model

SHAPES = {"binarynet": (3, 32, 32), "mnist_bnn": (1, 28, 28)}


def build(name: str, width: float) -> nn.Module:
    torch.manual_seed(0)
    model = create_model(name, **({"width": width} if name == "binarynet" else {}))
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.momentum = None
    with torch.no_grad():
        model.train()(torch.rand(64, *SHAPES[name]) * 2 - 1)
    return model.eval()


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def time_calls(fn, x: torch.Tensor, calls: int, clock=time.perf_counter) -> float:
    start = clock()
    for _ in range(calls):
        fn(x)
    return (clock() - start) / calls


def compare(model: nn.Module, packed: nn.Module, x: torch.Tensor, rounds: int, clock=time.perf_counter
            ) -> tuple[float, float]:
    """Median seconds per call of ``model`` and ``packed`` on ``x``, interleaved rounds."""
    with torch.inference_mode():
        assert torch.equal(model(x).argmax(1), packed(x).argmax(1)), "predictions differ"
        calls = max(1, int(0.3 / max(time_calls(model, x, 1), 1e-4)))  # about 0.3 s per timing
        times: dict[str, list[float]] = {"fp32": [], "packed": []}
        for r in range(rounds):
            order = [("fp32", model), ("packed", packed)]
            for name, fn in order if r % 2 == 0 else order[::-1]:
                times[name].append(time_calls(fn, x, calls, clock))
    return statistics.median(times["fp32"]), statistics.median(times["packed"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="binarynet", choices=sorted(SHAPES))
    parser.add_argument("--width", type=float, default=1.0, help="BinaryNet width multiplier")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--backend", default="kernel", choices=["kernel", "torch"])
    parser.add_argument("--clock", default="wall", choices=sorted(CLOCKS),
                        help="wall: elapsed time; cpu: CPU time of the process, all threads (on a loaded machine)")
    args = parser.parse_args()

    model = build(args.model, args.width)
    with tempfile.TemporaryDirectory() as folder:
        path = export(model, Path(folder) / "model.tbop")
        packed_bytes = path.stat().st_size
        packed = load_packed(path, backend=args.backend)
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    state_bytes = buffer.getbuffer().nbytes

    label = f"{args.model}" + (f" width {args.width:g}" if args.model == "binarynet" else "")
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, {label}, "
          f"packed backend {args.backend}, median of {args.rounds} interleaved rounds, {args.clock} clock")
    print(f"{'threads':>7}  {'batch':>5}  {'fp32 img/s':>11}  {'packed img/s':>12}  {'ratio':>6}")
    for threads in args.threads:
        torch.set_num_threads(threads)
        for batch in args.batches:
            x = torch.rand(batch, *SHAPES[args.model]) * 2 - 1
            fp32, fast = compare(model, packed, x, args.rounds, CLOCKS[args.clock])
            print(f"{threads:>7}  {batch:>5}  {batch / fp32:>11.1f}  {batch / fast:>12.1f}  {fp32 / fast:>5.2f}x")
    print(f"packed file {packed_bytes:,} bytes; fp32 state_dict {state_bytes:,} bytes "
          f"({state_bytes / packed_bytes:.1f}x smaller)")


if __name__ == "__main__":
    main()
