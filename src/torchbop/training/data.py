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

import contextlib
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn
from torch.optim.swa_utils import update_bn

from torchbop.data import DeviceLoader, class_balanced_split, load_cifar10, load_mnist
from torchbop.errors import UserError
from torchbop.training.config import TrainConfig

__all__ = ["Split", "Splits", "load_split", "make_splits", "seeded_subset", "recalibrate_batch_norm"]

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
        return (
            f"{config.dataset}: train {len(self.train[1])}, validation {len(self.val[1])} ({where}), test "
            f"{len(self.test[1])}; protocol {config.protocol}"
        )

    def check_batches(self, batch_size: int, world_size: int = 1) -> None:
        """Refuse a training set that cannot fill one batch per process (the last partial batch is dropped)."""
        images = len(self.train[1])
        if images // world_size < batch_size:
            per_rank = f" ({images // world_size} per process on {world_size} processes)" if world_size > 1 else ""
            raise UserError(
                f"The training set has {images} images{per_rank}, fewer than one batch of batch_size={batch_size}: "
                f"the run would train 0 steps. Lower --batch-size to at most {max(images // world_size, 1)} or "
                "train on more images (--subset)."
            )


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


def recalibrate_batch_norm(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    batch_size: int,
    *,
    device: str | torch.device = "cpu",
    memory_format: torch.memory_format = torch.contiguous_format,
    forward_context: Callable[[], Any] = contextlib.nullcontext,
) -> float:
    """Recompute every batch norm's running statistics of ``model`` over ``(images, labels)``; return the seconds.

    Batch norm's running averages (momentum 0.01 in ``ShiftBatchNorm``: about the last hundred batches) lag weights
    that Bop still flips; on the MNIST BNN after one epoch the test accuracy with them was 0.55-0.96 over 5 seeds, and
    0.972-0.975 with the statistics recomputed (issue 23). The model runs in training mode without gradients over the
    images in dataset order (no shuffle, no augmentation, the last partial batch dropped) with every batch norm reset
    and its momentum ``None``, a cumulative average (:func:`torch.optim.swa_utils.update_bn`); weights, other buffers
    and the RNG states are kept. ``TrainConfig.recalibrate_bn``: ``"end"`` before the test, ``"eval"`` also before
    every validation.

    Args:
        model: the network (its mode and the momenta of its batch norms are restored afterwards).
        images: uint8 ``[N, C, H, W]`` (or ``[N, H, W]``) training images, scaled as the training loader does.
        labels: their labels (unused by the statistics; the loader checks them).
        batch_size: images per forward pass; the training batch size gives the statistics training normalized with.
        device: where the batches are made and the model runs.
        memory_format: the batches' layout (the model's input memory format).
        forward_context: a context manager factory around the forward passes (the run's autocast, if any).

    Example:
        >>> torch.manual_seed(0) and None
        >>> model = nn.Sequential(nn.Flatten(), nn.Linear(4, 2), nn.BatchNorm1d(2))
        >>> images = torch.randint(0, 256, (8, 1, 2, 2), dtype=torch.uint8)
        >>> seconds = recalibrate_batch_norm(model, images, torch.zeros(8, dtype=torch.long), batch_size=8)
        >>> x = images.float().reshape(8, 4) / 127.5 - 1  # the loader's scaling to [-1, 1]
        >>> torch.allclose(model[2].running_mean, model[1](x).mean(0).detach())
        True
    """
    start = time.perf_counter()
    loader = DeviceLoader(
        images,
        labels,
        batch_size,
        shuffle=False,
        augment=False,
        device=device,
        drop_last=len(labels) >= batch_size,
        memory_format=memory_format,
    )
    device = torch.device(device)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), torch.no_grad(), forward_context():
        update_bn(loader, model)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def _with_channels(split: Split) -> Split:
    images, labels = split
    return (images.unsqueeze(1) if images.dim() == 3 else images), labels  # MNIST [N, 28, 28] -> [N, 1, 28, 28]
