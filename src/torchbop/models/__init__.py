"""The networks of the paper and its reproduction, by name.

``MODELS`` maps a name to its class, and ``create_model(name, **kwargs)`` builds one; kwargs go to the class.
Models return logits; the softmax lives in the loss.

Example:
    >>> from torchbop.models import MODELS, create_model
    >>> sorted(MODELS)  # doctest: +NORMALIZE_WHITESPACE
    ['binary_resnet18', 'binarynet', 'bireal_net18', 'mnist_bnn', 'quicknet', 'quicknet_large', 'quicknet_small',
     'reactnet_a']
    >>> create_model("binarynet", width=0.25, mode="latent").mode
    'latent'
"""

from __future__ import annotations

from typing import Any

from torch import nn

from torchbop.models.binary_resnet import BinaryResNet18
from torchbop.models.binarynet import BinaryNet
from torchbop.models.bireal_net import BiRealNet18
from torchbop.models.mnist_bnn import MnistBNN
from torchbop.models.quicknet import QuickNet, QuickNetLarge, QuickNetSmall
from torchbop.models.reactnet import ReActNetA

__all__ = [
    "MODELS",
    "create_model",
    "BinaryNet",
    "MnistBNN",
    "BiRealNet18",
    "ReActNetA",
    "BinaryResNet18",
    "QuickNet",
    "QuickNetSmall",
    "QuickNetLarge",
]

#: name -> model class.
MODELS: dict[str, type[nn.Module]] = {
    "mnist_bnn": MnistBNN,
    "binarynet": BinaryNet,
    "bireal_net18": BiRealNet18,
    "reactnet_a": ReActNetA,
    "binary_resnet18": BinaryResNet18,
    "quicknet_small": QuickNetSmall,
    "quicknet": QuickNet,
    "quicknet_large": QuickNetLarge,
}


def create_model(name: str, **kwargs: Any) -> nn.Module:
    """Build the model registered under ``name`` in ``MODELS``, passing ``kwargs`` to its class.

    Raises:
        ValueError: ``name`` is not in ``MODELS``.

    Example:
        >>> create_model("mnist_bnn")
        MnistBNN(
          mode=bop, padding=same
          (features): Sequential(
            (0): BinaryConv2d(1, 32, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1), bias=False, mode=bop)
            (1): MaxPool2d(kernel_size=2, stride=2, padding=0, dilation=1, ceil_mode=False)
            (2): ShiftBatchNorm2d(32, eps=0.001, momentum=0.01, scale=False)
            (3): BinaryConv2d(
              32, 64, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1), bias=False, mode=bop
              (input_quantizer): SteSign(clip_value=1.0)
            )
            (4): MaxPool2d(kernel_size=2, stride=2, padding=0, dilation=1, ceil_mode=False)
            (5): ShiftBatchNorm2d(64, eps=0.001, momentum=0.01, scale=False)
            (6): BinaryConv2d(
              64, 64, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1), bias=False, mode=bop
              (input_quantizer): SteSign(clip_value=1.0)
            )
            (7): MaxPool2d(kernel_size=2, stride=2, padding=0, dilation=1, ceil_mode=False)
            (8): ShiftBatchNorm2d(64, eps=0.001, momentum=0.01, scale=False)
          )
          (classifier): Sequential(
            (0): Flatten(start_dim=1, end_dim=-1)
            (1): BinaryLinear(
              in_features=576, out_features=64, bias=False, mode=bop
              (input_quantizer): SteSign(clip_value=1.0)
            )
            (2): ShiftBatchNorm1d(64, eps=0.001, momentum=0.01, scale=False)
            (3): BinaryLinear(
              in_features=64, out_features=10, bias=False, mode=bop
              (input_quantizer): SteSign(clip_value=1.0)
            )
            (4): ShiftBatchNorm1d(10, eps=0.001, momentum=0.01, scale=False)
          )
        )
    """
    if name not in MODELS:
        raise ValueError(f"Unknown model: {name!r} (known: {', '.join(sorted(MODELS))})")
    return MODELS[name](**kwargs)
