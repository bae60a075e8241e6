"""Binary layers and the functions that find, initialise, binarize and clip their weights.

Example:
    >>> import torch
    >>> from torch import nn
    >>> from torchbop.nn import BinaryConv2d, BinaryLinear, ShiftBatchNorm1d, ShiftBatchNorm2d, split_binary_params
    >>> model = nn.Sequential(
    ...     BinaryConv2d(1, 8, 3, padding=1, input_quantizer=None), nn.MaxPool2d(2), ShiftBatchNorm2d(8),
    ...     nn.Flatten(), BinaryLinear(8 * 4 * 4, 10), ShiftBatchNorm1d(10),
    ... )
    >>> model(torch.randn(2, 1, 8, 8)).shape
    torch.Size([2, 10])
    >>> binary, other = split_binary_params(model)
    >>> len(binary), len(other)
    (2, 2)
"""

from torchbop.nn.activations import RPReLU, RSign
from torchbop.nn.blocks import BiRealBlock, ReActNetBlock
from torchbop.nn.convert import binarize
from torchbop.nn.init import INIT_SCHEMES, binarize_, clip_latent_weights_, init_binary_weights_
from torchbop.nn.layers import (
    MODES,
    SCALES,
    BinaryConv1d,
    BinaryConv2d,
    BinaryLinear,
    ShiftBatchNorm1d,
    ShiftBatchNorm2d,
)
from torchbop.nn.params import binary_parameters, named_binary_layers, named_binary_parameters, split_binary_params

__all__ = [
    "MODES",
    "SCALES",
    "BinaryConv1d",
    "BinaryConv2d",
    "BinaryLinear",
    "ShiftBatchNorm1d",
    "ShiftBatchNorm2d",
    "INIT_SCHEMES",
    "init_binary_weights_",
    "binarize",
    "binarize_",
    "clip_latent_weights_",
    "named_binary_layers",
    "named_binary_parameters",
    "binary_parameters",
    "split_binary_params",
    "RSign",
    "RPReLU",
    "BiRealBlock",
    "ReActNetBlock",
]
