"""Throughput of the CIFAR-10 training input pipeline: DeviceLoader (batched pad-crop-flip) against a per-image loop.

What is timed: producing augmented float32 training batches in [-1, 1] from the uint8 CIFAR-10 training set
(pad 4, random 32x32 crop, random horizontal flip, x / 127.5 - 1), at batch sizes 50 (the paper's recipe) and 500.

* ``DeviceLoader``: the dataset on the device, one permutation and the augmentation parameters drawn per epoch,
  each batch gathered, scaled and augmented with a handful of tensor ops (``torchbop.data.loader``).
* per-image loop, the natural baseline: what a map-style ``Dataset.__getitem__`` does, image by image in Python
  (index, scale, ``F.pad``, slice, maybe flip), then ``torch.stack``; no worker processes for either.

Method: ``time.perf_counter`` around whole passes over ``--images`` images, best of ``--repeats`` after one
warm-up pass; on CUDA, ``torch.cuda.synchronize()`` before reading the clock. The data is the real CIFAR-10
training set when found (``--data-dir``, ``$TORCHBOP_DATA``, ``~/.cache/torchbop``), else random images of the
same shape (the timing does not depend on pixel values). Prints the torch version, device, thread count and, per
batch size, images/s of both and their ratio.

    python benchmarks/data_pipeline.py [--device cpu|cuda] [--images 20000] [--repeats 3] [--threads N]
"""

from __future__ import annotations

import argparse
import random
import time

import torch
import torch.nn.functional as F

from torchbop.data import DatasetNotFoundError, DeviceLoader, load_cifar10


def per_image_batches(images: torch.Tensor, batch_size: int, n_images: int, seed: int):
    """The baseline: shuffle, then augment image by image in Python."""
    rng = random.Random(seed)
    order = list(range(images.shape[0]))
    rng.shuffle(order)
    order = order[:n_images]
    for start in range(0, len(order), batch_size):
        batch = []
        for i in order[start : start + batch_size]:
            image = images[i].float() / 127.5 - 1
            padded = F.pad(image, (4, 4, 4, 4), value=-1.0)
            r, c = rng.randint(0, 8), rng.randint(0, 8)
            crop = padded[:, r : r + 32, c : c + 32]
            batch.append(crop.flip(-1) if rng.random() < 0.5 else crop)
        yield torch.stack(batch)


def device_loader_batches(loader: DeviceLoader, n_images: int):
    seen = 0
    for x, _ in loader:
        yield x
        seen += len(x)
        if seen >= n_images:
            return


def best_time(make_batches, repeats: int, device: torch.device) -> float:
    def one_pass() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        checksum = 0.0
        for x in make_batches():
            checksum += float(x[0, 0, 0, 0]) if device.type == "cpu" else 0.0  # touch the output on CPU
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    one_pass()  # warm-up
    return min(one_pass() for _ in range(repeats))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--images", type=int, default=20_000, help="images per timed pass")
    parser.add_argument("--baseline-images", type=int, default=5_000, help="images per pass of the slow baseline")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[50, 500])
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    try:
        images, labels = load_cifar10(args.data_dir, train=True)
        source = "CIFAR-10 train (real)"
    except DatasetNotFoundError:
        images = torch.randint(0, 256, (50_000, 3, 32, 32), dtype=torch.uint8)
        labels = torch.randint(0, 10, (50_000,))
        source = "random uint8 images of CIFAR-10's shape (real data not found)"
    print(
        f"torch {torch.__version__}, device {device}"
        f"{' (' + torch.cuda.get_device_name(device) + ')' if device.type == 'cuda' else ''}, "
        f"{torch.get_num_threads()} threads; data: {source}"
    )
    print(f"{'batch':>6} {'DeviceLoader img/s':>20} {'per-image loop img/s':>21} {'ratio':>7}")
    for batch_size in args.batch_sizes:
        loader = DeviceLoader(images, labels, batch_size, augment=True, seed=0, device=device)
        fast = best_time(lambda: device_loader_batches(loader, args.images), args.repeats, device)
        device_images = images.to(device)
        slow = best_time(
            lambda: per_image_batches(device_images, batch_size, args.baseline_images, 0), args.repeats, device
        )
        fast_rate, slow_rate = args.images / fast, args.baseline_images / slow
        print(f"{batch_size:>6} {fast_rate:>20,.0f} {slow_rate:>21,.0f} {fast_rate / slow_rate:>6.1f}x")


if __name__ == "__main__":
    main()
