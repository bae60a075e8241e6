"""Fixtures of the deploy tests: real test-set images, a few hundred of each test set; a missing dataset fails."""

from __future__ import annotations

import pytest
import torch
from torch import nn

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


def _realistic(model: nn.Module, images: torch.Tensor, seed: int = 0) -> nn.Module:
    """Random learned activations and scales, batch-norm statistics of ``images``; eval mode."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, value in [*model.named_parameters(), *model.named_buffers()]:
            leaf = name.rsplit(".", 1)[-1]
            if leaf in ("threshold", "shift_in", "shift_out"):
                value.copy_(torch.randn(value.shape, generator=g) * 0.3)
            elif leaf == "slope":
                value.copy_(torch.rand(value.shape, generator=g))
            elif leaf == "weight_scale":
                value.copy_(torch.rand(value.shape, generator=g) + 0.5)
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.reset_running_stats()
                module.momentum = None
                if module.bias is not None:
                    module.bias.copy_(torch.randn(module.bias.shape, generator=g) * 0.5)
        model.train()(images)
    return model.eval()


@pytest.fixture(scope="session")
def realistic():
    """``realistic(model, images, seed=0) -> model``: random learned activations (RSign thresholds, RPReLU shifts and
    slopes), weight scales and batch-norm shifts, batch-norm statistics of ``images``; eval mode (shared by the
    packed-model and ONNX tests)."""
    return _realistic
