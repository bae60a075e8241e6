r"""ReActNet-A (Liu et al., "ReActNet: Towards Precise Binary Neural Network with Generalized Activation Functions",
ECCV 2020, arXiv:2003.03488) as the authors' code builds it (liuzechun/ReActNet, ``mobilenet/2_step2/reactnet.py``).

A MobileNet-V1 in which every depthwise-separable pair is a :class:`~torchbop.nn.ReActNetBlock` (binary 3x3
convolution keeping the channels, binary 1x1 convolution keeping or doubling them; RSign, RPReLU, real shortcuts):

=================================  =================  =========================================================
layer                              output (ImageNet)  notes
=================================  =================  =========================================================
Conv2d 3x3/2 3->32, BN             32 x 112 x 112     real stem (no bias), torch's batch norm defaults
block 32->64                       64 x 112 x 112     stride 1 (the authors' rule: no stride into 64 channels)
block 64->128 /2, block 128        128 x 56 x 56
block 128->256 /2, block 256       256 x 28 x 28
block 256->512 /2, 5 x block 512   512 x 14 x 14
block 512->1024 /2, block 1024     1024 x 7 x 7
average pool, Linear 1024->1000    1000               real dense layer with bias: the logits
=================================  =================  =========================================================

The channel sequence is MobileNet-V1's (``CHANNELS``: 32, 64, 128, 128, 256, 256, 512 x 6, 1024 x 2), and a block is
strided exactly where the channels change, except into 64. That gives 4,816,896,000 binary MACs and 11,862,016
float MACs per 224 x 224 image, the 4.82e9 BOPs and 0.12e8 FLOPs of the paper's Table (ReActNet-A).

Weights: the authors' ``HardBinaryConv`` scales the binary weights by their per-channel mean |W| (gradient stopped)
and passes the clipped identity back: ``mode="latent"`` uses ``scale="mean_abs"`` with a straight-through sign. In
``mode="bop"`` the default is no scale (each binary convolution is followed by batch norm, which cancels a
per-channel factor). Binary weights start from torchbop's initialisation (Glorot-uniform, binarized in Bop mode),
not the authors' all-positive ``rand * 0.001``; real layers have torch's default initialisation, as theirs.

``stem="cifar10"`` (32 x 32 images, 10 classes) makes the stem convolution stride 1, as CIFAR-10 versions of
ImageNet BNNs do (e.g. the CIFAR ResNet-18 of IR-Net, arXiv:1909.10788): the blocks then run at 32, 16, 8, 4 and 2
pixels. ``width`` multiplies the base channel count 32 (rounded, at least 1); the others keep their ratios to it, so
that every doubling block still doubles exactly.

Example:
    >>> import torch
    >>> from torchbop.nn import named_binary_parameters
    >>> model = ReActNetA(stem="cifar10", width=0.125)
    >>> model(torch.randn(2, 3, 32, 32)).shape
    torch.Size([2, 10])
    >>> [block.conv1x1.out_channels for block in model.features.blocks][:4]
    [8, 16, 16, 32]
"""

from __future__ import annotations

from collections import OrderedDict

from torch import nn

from torchbop.models._family import FamilyModel, resolve_scale, scaled
from torchbop.nn.blocks import ReActNetBlock

__all__ = ["ReActNetA", "CHANNELS"]

#: Output channels of the stem and the 13 blocks (MobileNet-V1's sequence), at width 1.
CHANNELS: tuple[int, ...] = (32, 64, 128, 128, 256, 256, 512, 512, 512, 512, 512, 512, 1024, 1024)


def _strides(channels: tuple[int, ...]) -> list[int]:
    """The authors' rule: a block is strided where its channels differ from the previous ones, except into the
    second entry of the sequence (64 at width 1)."""
    return [2 if (i > 1 and channels[i] != channels[i - 1]) else 1 for i in range(1, len(channels))]


class ReActNetA(FamilyModel):
    r"""ReActNet-A as the authors' code builds it; see the module docstring.

    Args:
        mode: ``"bop"`` (+-1 weights trained by Bop) or ``"latent"`` (latent weights, per-channel mean |W| scale).
        stem: ``"imagenet"`` (224 x 224, as published) or ``"cifar10"`` (32 x 32: stride-1 stem).
        num_classes: outputs; ``None``: 1000 for ImageNet, 10 for CIFAR-10.
        width: multiplier > 0 of every channel count.
        channels_last: compute in ``torch.channels_last``.
        scale: the binary convolutions' weight scale; ``"auto"``: ``"mean_abs"`` in latent mode, ``None`` in Bop
            mode.

    Example:
        >>> model = ReActNetA()
        >>> [b.conv3x3.stride[0] for b in model.features.blocks]
        [1, 2, 1, 2, 1, 2, 1, 1, 1, 1, 1, 2, 1]
        >>> model.head[-1]
        Linear(in_features=1024, out_features=1000, bias=True)
    """

    def __init__(
        self,
        mode: str = "bop",
        stem: str = "imagenet",
        num_classes: int | None = None,
        width: float = 1.0,
        channels_last: bool = True,
        scale: str | None = "auto",
    ) -> None:
        super().__init__(mode=mode, stem=stem, num_classes=num_classes, width=width, channels_last=channels_last)
        base = scaled(CHANNELS[0], width)
        channels = tuple(base * (c // CHANNELS[0]) for c in CHANNELS)
        stem_stride = 2 if stem == "imagenet" else 1
        stem_layers = OrderedDict(conv=nn.Conv2d(3, base, 3, stem_stride, 1, bias=False), bn=nn.BatchNorm2d(base))
        blocks = [
            ReActNetBlock(c_in, c_out, stride, mode=mode, scale=resolve_scale(scale, mode))
            for c_in, c_out, stride in zip(channels[:-1], channels[1:], _strides(CHANNELS))
        ]
        self.features = nn.Sequential(OrderedDict(stem=nn.Sequential(stem_layers), blocks=nn.Sequential(*blocks)))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels[-1], self.num_classes))
