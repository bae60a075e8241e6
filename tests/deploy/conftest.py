"""Fixtures of the deploy tests: real test-set images, a few hundred of each test set; a missing dataset fails."""

from __future__ import annotations

import pytest
import torch

from torchbop.data import DatasetNotFoundError, load_cifar10, load_mnist, scale_images
from torchbop.data.paths import resolve_data_dir

#: Real test images per dataset in the tests: enough for thousands of sign decisions per layer, a second of CPU.
N_IMAGES = 300


def _load(loader, *args):
    root = resolve_data_dir()
    try:
        return loader(root, *args)
    except DatasetNotFoundError as error:  # a deploy check on real data must not pass by skipping
        pytest.fail(f"real dataset missing under {root} (set $TORCHBOP_DATA): {error}", pytrace=False)


@pytest.fixture(scope="session")
def mnist_images() -> tuple[torch.Tensor, torch.Tensor]:
    """The first :data:`N_IMAGES` MNIST test images, scaled to [-1, 1], ``[N, 1, 28, 28]``, and their labels."""
    images, labels = _load(load_mnist, False, "mnist")
    return scale_images(images[:N_IMAGES]).unsqueeze(1), labels[:N_IMAGES]


@pytest.fixture(scope="session")
def cifar10_images() -> tuple[torch.Tensor, torch.Tensor]:
    """The first :data:`N_IMAGES` CIFAR-10 test images, scaled to [-1, 1], ``[N, 3, 32, 32]``, and their labels."""
    images, labels = _load(load_cifar10, False)
    return scale_images(images[:N_IMAGES]), labels[:N_IMAGES]

