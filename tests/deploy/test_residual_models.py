"""Residual BNNs through the fx-based packed engine: export -> load_packed -> the model's eval-mode predictions.

Each family (contract C) at width 1/8, untrained (random +-1 weights) but made realistic: batch norms in eval mode
with running statistics averaged over the images (one train-mode pass, ``momentum=None``) and random shifts, and
random RSign thresholds, RPReLU shifts and slopes and weight scales, so that signs flip both ways and predictions
differ between images. Tolerance as in ``test_packed_model.py``: the binary products are exact integers on both
sides and everything else is the same torch call on the same numbers, so the logits come out equal bit for bit
here; ``assert_close`` at 1e-5 leaves room for float32 rounding only, while a wrong bit, sign or threshold moves a
logit by far more.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import torchbop
from torchbop.data import load_cifar10, scale_images
from torchbop.deploy import export, load_packed, pack_model
from torchbop.models import create_model

BACKENDS = ("kernel", "torch")
N_IMAGES = 256


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def cifar10_test_images(data_dir) -> torch.Tensor:
    """The first 256 CIFAR-10 test images in [-1, 1]."""
    images, _ = load_cifar10(data_dir, False)
    return scale_images(images[:N_IMAGES])


def assert_same_predictions(model: nn.Module, packed: nn.Module, images: torch.Tensor) -> None:
    with torch.no_grad():
        expected = model(images)
        got = packed(images)
    assert len(expected.argmax(1).unique()) >= 3, "predictions do not vary: the check would be vacuous"
    assert torch.equal(got.argmax(1), expected.argmax(1))
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


FAMILIES = [
    ("bireal_net18", {}),
    ("reactnet_a", {}),
    ("binary_resnet18", {}),
    ("quicknet_small", {}),
    ("reactnet_a", {"mode": "latent"}),
    ("quicknet", {"mode": "latent", "channels_last": False}),
]


@pytest.mark.realdata
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name, kwargs", FAMILIES)
def test_export_load_predicts_as_the_model(cifar10_test_images, tmp_path, name, kwargs, backend, realistic):
    torch.manual_seed(0)
    model = realistic(create_model(name, stem="cifar10", width=1 / 8, **kwargs), cifar10_test_images, seed=1)
    path = export(model, tmp_path / f"{name}.tbop", input_shape=[3, 32, 32])
    packed = load_packed(path, backend=backend)
    assert_same_predictions(model, packed, cifar10_test_images)


@pytest.mark.realdata
@pytest.mark.parametrize("backend", BACKENDS)
def test_imagenet_stem_with_zero_padding(cifar10_test_images, backend, realistic):
    """QuickNet's ImageNet stem pads with ``nn.ZeroPad2d``; 64x64 images keep the test fast."""
    images = nn.functional.interpolate(cifar10_test_images[:64], size=64, mode="bilinear", align_corners=False)
    torch.manual_seed(1)
    model = realistic(create_model("quicknet_small", stem="imagenet", num_classes=10, width=1 / 8), images, 2)
    assert_same_predictions(model, pack_model(model, backend=backend), images)


class FloatResNet(nn.Module):
    """A small real residual network with a depthwise convolution, concatenation and average pooling."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.conv1 = nn.Conv2d(16, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.depthwise = nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.bn2 = nn.BatchNorm2d(16)
        self.down = nn.Sequential(nn.AvgPool2d(2), nn.Conv2d(32, 32, 1, bias=False), nn.BatchNorm2d(32))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = self.bn1(self.conv1(x)) + x
        x = torch.cat([x, self.bn2(self.depthwise(x))], dim=1)
        return self.head(self.down(x))


@pytest.mark.realdata
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("scale", [None, "fixed"])
def test_a_binarized_model(cifar10_test_images, backend, scale, realistic):
    torch.manual_seed(2)
    model = torchbop.binarize(FloatResNet(), scale=scale)
    assert sum(getattr(m, "is_binary", False) for m in model.modules()) == 3  # first and last layer stay real
    model = realistic(model, cifar10_test_images, seed=3)
    assert_same_predictions(model, pack_model(model, backend=backend), cifar10_test_images)
