"""The dataset table: one row per dataset torchbop trains on, and the only place that knows them by name.

Every consumer goes through :data:`DATASETS` (or :func:`get_dataset`, :func:`load_dataset`): the training data,
the experiments, :func:`~torchbop.data.fetch.fetch_datasets`, the configuration's choices and the CLI's ``summary``
and ``export`` (the input shape). A new dataset is one row here plus its reader module, as a new model is one line of
``torchbop.models.MODELS`` (the shape of ``timm``'s and Larq Zoo's registries, without import-time side effects).

=================  =========  ==============  =======  ============  ==========  ==============================
name               folder     input shape     classes  train / test  mean / std  default augmentation
=================  =========  ==============  =======  ============  ==========  ==============================
``mnist``          mnist/     [1, 28, 28]     10       60000/10000   none        none
``fashion-mnist``  fashion-   [1, 28, 28]     10       60000/10000   none        none
                   mnist/
``cifar10``        cifar10/   [3, 32, 32]     10       50000/10000   none        pad 4, random crop, flip
=================  =========  ==============  =======  ============  ==========  ==============================

Pixels reach the networks as ``x / 127.5 - 1`` in [-1, 1] (:func:`~torchbop.data.loader.scale_images`), the scaling
of the BinaryNet and Bop papers (arXiv:1602.02830, arXiv:1906.02107); no dataset is standardized with a per-channel
mean and standard deviation, so ``mean_std`` is ``None`` in every row. The default augmentation is what the shipped
recipes of a dataset set (``augment: true`` for CIFAR-10: pad 4, random 32 x 32 crop, horizontal flip,
:func:`~torchbop.data.loader.pad_crop_flip`); digits are never flipped.

Example:
    >>> sorted(DATASETS)
    ['cifar10', 'fashion-mnist', 'mnist']
    >>> get_dataset("cifar10").input_shape, get_dataset("mnist").train_size
    ((3, 32, 32), 60000)
    >>> get_dataset("svhn")
    Traceback (most recent call last):
    ...
    ValueError: Unknown dataset 'svhn' (expected one of 'mnist', 'fashion-mnist', 'cifar10')
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import torch

from torchbop.data import cifar10, mnist
from torchbop.data.paths import RemoteFile, resolve_data_dir

__all__ = ["Dataset", "DATASETS", "get_dataset", "check_dataset_names", "load_dataset", "missing_dataset_files"]

Split = tuple[torch.Tensor, torch.Tensor]
PathLike = str | os.PathLike[str] | None


@dataclass(frozen=True)
class Dataset:
    """One row of the table.

    Attributes:
        name: the key (``TrainConfig.dataset``, ``--dataset``) and the folder under the data root.
        files: what of the dataset is missing under a data root, as ``(folder, remote)`` pairs to download.
        loader: ``loader(root, train, download, verify) -> (uint8 images [N, C, H, W], int64 labels [N])``.
        input_shape: one image as the models take it, ``(channels, height, width)``.
        classes: the class names, in label order.
        train_size, test_size: images in the canonical splits.
        mean_std: per-channel ``(mean, std)`` the images are standardized with, or ``None`` (see the module
            docstring: every dataset is scaled to [-1, 1] instead).
        augmentation: what the recipes of this dataset train with by default (``None``: no augmentation).
    """

    name: str
    files: Callable[[Path], list[tuple[Path, RemoteFile]]]
    loader: Callable[[PathLike, bool, bool, bool], Split]
    input_shape: tuple[int, int, int]
    classes: tuple[str, ...]
    train_size: int
    test_size: int
    mean_std: tuple[tuple[float, ...], tuple[float, ...]] | None = None
    augmentation: str | None = None


def _idx_loader(variant: str) -> Callable[[PathLike, bool, bool, bool], Split]:
    def load(root: PathLike, train: bool, download: bool, verify: bool) -> Split:
        images, labels = mnist.load_mnist(root, train=train, variant=variant, download=download, verify=verify)
        return images.unsqueeze(1), labels  # [N, 28, 28] -> [N, 1, 28, 28]

    return load


def _cifar10_loader(root: PathLike, train: bool, download: bool, verify: bool) -> Split:
    return cifar10.load_cifar10(root, train=train, download=download, verify=verify)


_DIGITS = tuple(str(d) for d in range(10))
_FASHION = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")

#: name -> :class:`Dataset`. The order is the order of every listing (choices, error messages).
DATASETS: dict[str, Dataset] = {
    "mnist": Dataset(
        "mnist",
        lambda root: mnist.missing_files(root, "mnist"),
        _idx_loader("mnist"),
        (1, 28, 28),
        _DIGITS,
        60_000,
        10_000,
    ),
    "fashion-mnist": Dataset(
        "fashion-mnist",
        lambda root: mnist.missing_files(root, "fashion-mnist"),
        _idx_loader("fashion-mnist"),
        (1, 28, 28),
        _FASHION,
        60_000,
        10_000,
    ),
    "cifar10": Dataset(
        "cifar10",
        cifar10.missing_files,
        _cifar10_loader,
        (3, 32, 32),
        cifar10.CIFAR10_CLASSES,
        50_000,
        10_000,
        augmentation="pad 4, random crop, horizontal flip",
    ),
}


def get_dataset(name: str) -> Dataset:
    """The row of ``name``; ``ValueError`` naming the known datasets otherwise."""
    if name not in DATASETS:
        raise ValueError(f"Unknown dataset {name!r} (expected one of {', '.join(map(repr, DATASETS))})")
    return DATASETS[name]


def check_dataset_names(names: Iterable[str] | str) -> list[str]:
    """``names`` (one name or several) without repeats, each checked against the table.

    Example:
        >>> check_dataset_names(["mnist", "cifar10", "mnist"])
        ['mnist', 'cifar10']
    """
    unique = list(dict.fromkeys([names] if isinstance(names, str) else names))
    unknown = [n for n in unique if n not in DATASETS]
    if unknown:
        raise ValueError(f"Unknown dataset(s) {', '.join(map(repr, unknown))}; expected some of {', '.join(DATASETS)}")
    return unique


def load_dataset(
    name: str, root: PathLike = None, *, train: bool = True, download: bool = False, verify: bool = True
) -> Split:
    """One split of ``name`` from the data root (:func:`~torchbop.data.paths.resolve_data_dir`):
    ``(uint8 images [N, C, H, W], int64 labels [N])``, every dataset with its channel axis."""
    return get_dataset(name).loader(root, train, download, verify)


def missing_dataset_files(name: str, root: PathLike = None) -> list[tuple[Path, RemoteFile]]:
    """The files of ``name`` missing under the data root (both splits), as ``(folder, remote)`` pairs."""
    return get_dataset(name).files(resolve_data_dir(root))
