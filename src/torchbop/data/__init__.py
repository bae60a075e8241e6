"""Datasets and batch loading: MNIST, Fashion-MNIST and CIFAR-10 from local files (or a checksummed download),
verified against their known content, a seeded class-balanced split, and a device-resident loader with batched
augmentation.

Modules: :mod:`~torchbop.data.paths` (the data root, the atomic checksummed download, the errors),
:mod:`~torchbop.data.fetch` (:func:`fetch_datasets`: download what is missing, with progress, then verify),
:mod:`~torchbop.data.verify` (content digests), :mod:`~torchbop.data.progress` (download progress),
:mod:`~torchbop.data.idx` and :mod:`~torchbop.data.mnist` (MNIST, Fashion-MNIST), :mod:`~torchbop.data.cifar10`,
:mod:`~torchbop.data.split` and :mod:`~torchbop.data.loader`; :mod:`~torchbop.data.datasets` is the table of
datasets (files, loader, input shape, classes) that everything else looks them up in.

Every loader verifies what it reads (``verify=False`` turns this off, for synthetic files): MNIST files by the md5
of their uncompressed content, CIFAR-10 splits by an order-independent digest of their images and labels, whether
they come from the extracted batches or from the archive. A mismatch is a :class:`ChecksumError` naming the file
and the fix.

Example:
    >>> from torchbop.data import DeviceLoader, class_balanced_split
    >>> labels = torch.arange(20) % 2
    >>> train_idx, val_idx = class_balanced_split(labels, 0.1, seed=0)
    >>> images = torch.zeros(20, 28, 28, dtype=torch.uint8)
    >>> x, y = next(iter(DeviceLoader(images[train_idx], labels[train_idx], batch_size=8)))
    >>> x.shape, x.min().item()
    (torch.Size([8, 1, 28, 28]), -1.0)
"""

import torch  # noqa: F401  (the module docstring's doctest uses it)

from torchbop.data.cifar10 import CIFAR10_CLASSES, load_cifar10, read_cifar10_batch
from torchbop.data.datasets import DATASETS, Dataset, get_dataset, load_dataset
from torchbop.data.fetch import fetch_datasets
from torchbop.data.idx import parse_idx, read_idx
from torchbop.data.loader import DeviceLoader, pad_crop_flip, scale_images
from torchbop.data.mnist import load_mnist
from torchbop.data.paths import (
    ChecksumError,
    DatasetNotFoundError,
    DatasetUnavailableError,
    DownloadError,
    download_file,
    resolve_data_dir,
)
from torchbop.data.split import class_balanced_split

__all__ = [
    "CIFAR10_CLASSES",
    "ChecksumError",
    "DATASETS",
    "Dataset",
    "DatasetNotFoundError",
    "DatasetUnavailableError",
    "DeviceLoader",
    "DownloadError",
    "class_balanced_split",
    "download_file",
    "fetch_datasets",
    "get_dataset",
    "load_cifar10",
    "load_dataset",
    "load_mnist",
    "pad_crop_flip",
    "parse_idx",
    "read_cifar10_batch",
    "read_idx",
    "resolve_data_dir",
    "scale_images",
]
