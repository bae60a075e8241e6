"""Exactness of the packed engine over whole test sets: every kernel path against the model, image by image.

For MnistBNN (the full MNIST test set) and BinaryNet and the registered families (the full CIFAR-10 test set; the
families with the CIFAR-10 stem at ``--width``), untrained: random +-1 weights (the models' own initialisation),
batch-norm running statistics from 1,000 training images (one train-mode pass, ``momentum=None``) and random
batch-norm shifts and scales (some negative). For each model and each path (``torch``, the pure-torch reference,
and the C paths this CPU runs) the script counts the images whose argmax differs from the model's and the logits
not bit-identical to the reference path's, and prints the largest logit difference from the model.
Data: ``$TORCHBOP_DATA``.

    python benchmarks/packed_exactness.py [--models mnist_bnn binarynet ...] [--width 0.125] [--limit N]
                                          [--paths torch avx2 ...]

The first path listed is the reference of the ``logits != ref`` column (``torch`` by default); with ``--paths``
not starting with ``torch`` that column compares to the first path given.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

from torchbop.data import load_cifar10, load_mnist, scale_images
from torchbop.data.paths import resolve_data_dir
from torchbop.deploy import pack_model
from torchbop.deploy.engine_kernels import available_paths
from torchbop.models import create_model

FAMILIES = ("bireal_net18", "reactnet_a", "binary_resnet18", "quicknet_small", "quicknet", "quicknet_large")


def realistic(model: nn.Module, images: torch.Tensor, seed: int = 1) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.reset_running_stats()
                module.momentum = None
                if module.bias is not None:
                    module.bias.copy_(torch.randn(module.bias.shape, generator=g) * 0.5)
                if module.weight is not None:
                    module.weight.copy_(torch.randn(module.weight.shape, generator=g))
        model.train()(images)
    return model.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=["mnist_bnn", "binarynet", *FAMILIES])
    parser.add_argument("--width", type=float, default=0.125, help="width of BinaryNet and the families")
    parser.add_argument("--limit", type=int, default=None, help="only the first N test images")
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--paths", nargs="+", default=None, help="torch and C paths (default: all this CPU runs)")
    args = parser.parse_args()
    root = resolve_data_dir()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    paths = tuple(args.paths) if args.paths else ("torch", *available_paths())
    print(
        f"torch {torch.__version__}; paths {', '.join(paths)}; untrained models (random +-1 weights, batch-norm "
        f"statistics from 1,000 training images)"
    )
    print(
        f"{'model':<16} {'images':>6} {'path':<9} {'argmax differs':>14} {'logits != ref':>13} "
        f"{'max |logit - model|':>19} {'s':>6}"
    )
    for name in args.models:
        if name == "mnist_bnn":
            train, _ = load_mnist(root, True, "mnist")
            test, _ = load_mnist(root, False, "mnist")
            train, test = scale_images(train[:1000]).unsqueeze(1), scale_images(test).unsqueeze(1)
            kwargs = {}
        else:
            train, _ = load_cifar10(root, True)
            test, _ = load_cifar10(root, False)
            train, test = scale_images(train[:1000]), scale_images(test)
            kwargs = {"width": args.width} if name == "binarynet" else {"stem": "cifar10", "width": args.width}
        test = test[: args.limit]
        torch.manual_seed(0)
        model = realistic(create_model(name, **kwargs), train)
        with torch.no_grad():
            expected = torch.cat([model(test[i : i + args.batch]) for i in range(0, len(test), args.batch)])
        reference = None
        for path in paths:
            start = time.perf_counter()
            packed = pack_model(model, backend=path)
            got = torch.cat([packed(test[i : i + args.batch]) for i in range(0, len(test), args.batch)])
            seconds = time.perf_counter() - start
            if reference is None:
                reference = got
            wrong = int((got.argmax(1) != expected.argmax(1)).sum())
            unequal = int((got != reference).any(1).sum())
            print(
                f"{name:<16} {len(test):>6} {path:<9} {wrong:>14} {unequal:>13} "
                f"{(got - expected).abs().max().item():>19.3g} {seconds:>6.1f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
