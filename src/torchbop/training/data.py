"""A run's three splits, from the dataset files or from tensors, by the config's protocol.

* ``"original"``: train on the whole training set, validate on the test set (what the paper's code did);
* ``"reproduction"``: a seeded class-balanced ``val_fraction`` of the training set is held out for validation (the
  reproducibility report's 45k/5k split on CIFAR-10); the test set is used only for the final test.

``subset`` then keeps a seeded random ``subset`` of the training images (:func:`seeded_subset`, the one subset rule
of torchbop: the experiments draw theirs with seed 0, so every seed and configuration sees the same images). The loop
serves each split with a :class:`torchbop.data.DeviceLoader` on the training device.

Example:
    >>> import torch
    >>> from torchbop.training.config import TrainConfig
    >>> x, y = torch.zeros(20, 28, 28, dtype=torch.uint8), torch.arange(20) % 10
    >>> config = TrainConfig(subset=8, batch_size=4)
    >>> make_splits(config, {"train": (x, y), "test": (x[:4], y[:4])}).describe(config)
    'mnist: train 8, validation 4 (test set), test 4; protocol original'
    >>> seeded_subset((x, y), 3, seed=0)[1]
    tensor([4, 5, 3])
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from torchbop.data import class_balanced_split, load_cifar10, load_mnist
from torchbop.errors import UserError
from torchbop.training.config import TrainConfig

__all__ = ["Split", "Splits", "load_split", "make_splits", "seeded_subset"]

Split = tuple[torch.Tensor, torch.Tensor]


def load_split(config: TrainConfig, train: bool, download: bool = False) -> Split:
    """``(uint8 images [N, C, H, W], int64 labels [N])`` of the config's dataset from disk."""
    if config.dataset == "cifar10":
        return load_cifar10(config.data_dir, train=train, download=download)
    return load_mnist(config.data_dir, train=train, variant=config.dataset, download=download)


@dataclass(frozen=True)
class Splits:
    """The training, validation and test ``(images [N, C, H, W], labels)`` of a run."""

    train: Split
    val: Split
    test: Split

    def describe(self, config: TrainConfig) -> str:
        """One line: sizes of the three splits and the protocol."""
        where = "test set" if config.protocol == "original" else f"held-out {config.val_fraction:.0%}"
        return (f"{config.dataset}: train {len(self.train[1])}, validation {len(self.val[1])} ({where}), test "
                f"{len(self.test[1])}; protocol {config.protocol}")

    def check_batches(self, batch_size: int, world_size: int = 1) -> None:
        """Refuse a training set that cannot fill one batch per process (the last partial batch is dropped)."""
        images = len(self.train[1])
        if images // world_size < batch_size:
            per_rank = f" ({images // world_size} per process on {world_size} processes)" if world_size > 1 else ""
            raise UserError(
                f"The training set has {images} images{per_rank}, fewer than one batch of batch_size={batch_size}: "
                f"the run would train 0 steps. Lower --batch-size to at most {max(images // world_size, 1)} or "
                "train on more images (--subset).")


def make_splits(config: TrainConfig, data: dict[str, Split] | None = None) -> Splits:
    """The splits of ``config`` from ``data`` (``{"train": (x, y), "test": (x, y)}``) or from the dataset files."""
    if data is not None:
        train, test = data["train"], data["test"]
    else:
        train, test = load_split(config, train=True), load_split(config, train=False)
    train, test = _with_channels(train), _with_channels(test)
    val = test
    if config.protocol == "reproduction":
        train_idx, val_idx = class_balanced_split(train[1], val_fraction=config.val_fraction, seed=config.seed)
        train, val = (train[0][train_idx], train[1][train_idx]), (train[0][val_idx], train[1][val_idx])
    return Splits(seeded_subset(train, config.subset, config.seed), val, test)


def seeded_subset(split: Split, n: int | None, seed: int) -> Split:
    """``(images, labels)`` cut to the first ``n`` of ``torch.randperm(len(labels))`` drawn with ``seed``; ``None``,
    or an ``n`` as large as the set, returns ``split`` itself."""
    images, labels = split
    if n is None or n >= len(labels):
        return split
    keep = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))[:n]
    return images[keep], labels[keep]


def _with_channels(split: Split) -> Split:
    images, labels = split
    return (images.unsqueeze(1) if images.dim() == 3 else images), labels  # MNIST [N, 28, 28] -> [N, 1, 28, 28]
