r"""The binary ResNet-18 for CIFAR-10 of the BNN literature, as IR-Net (Qin et al., "Forward and Backward
Information Retention for Accurate Binary Neural Networks", CVPR 2020, arXiv:1909.10788) defines it in its code
(htqin/IR-Net, ``CIFAR-10/ResNet18/resnet.py``), itself the CIFAR ResNet-18 of kuangliu/pytorch-cifar (He et al.,
arXiv:1512.03385) with binary 3x3 convolutions.

======================================  ================  ========================================================
layer                                   output            notes
======================================  ================  ========================================================
Conv2d 3x3 3->64, BN                    64 x 32 x 32      real first layer, no activation (the next sign binarizes)
2 x BasicBlock 64                       64 x 32 x 32
BasicBlock 64->128 /2, BasicBlock 128   128 x 16 x 16     first: real shortcut, 1x1 conv stride 2 + BN
BasicBlock 128->256 /2, BasicBlock 256  256 x 8 x 8
BasicBlock 256->512 /2, BasicBlock 512  512 x 4 x 4
average pool 4x4, BN1d, Linear 512->10  10                real last layer (with bias): the logits
======================================  ================  ========================================================

A :class:`BinaryBasicBlock` is ResNet's two-convolution block with both 3x3 convolutions binary (weights and
inputs):

.. math::
    y = \operatorname{hardtanh}\big(\operatorname{BN}_2(W_2 \circledast \operatorname{sign}(
        \operatorname{hardtanh}(\operatorname{BN}_1(W_1 \circledast \operatorname{sign}(x))))) + s(x)\big)

with :math:`s` the identity, or a real 1x1 convolution (strided) and batch norm where the block downsamples (IR-Net
keeps the shortcut real, as do the BNN papers that use this network). Batch norm has torch's defaults. The hardtanh
activations are IR-Net's; before a sign they change nothing forward, and the one after the addition clips the
block's output to [-1, 1]. IR-Net's own binarization (balanced, standardized weights with a power-of-two scale and its
EDE estimator) is the method of that paper, not the architecture, and is not copied: the binary convolutions here
are torchbop's (straight-through sign for the inputs; +-1 weights in Bop mode, latent weights with a straight-through
sign in latent mode, no weight scale by default since batch norm follows every convolution).

10,985,472 binary weights (the same 16 binary 3x3 convolutions as Bi-Real Net 18), 11,174,986 trainable parameters
in all: the 11,173,962 of kuangliu's CIFAR ResNet-18 plus IR-Net's batch norm of the 512 pooled features.

``width`` multiplies the base channel count 64 (rounded, at least 1). The model is for 32 x 32 images: ``stem``
accepts only ``"cifar10"`` (contract C's argument, kept for a uniform interface).

Example:
    >>> import torch
    >>> BinaryResNet18(width=0.125)(torch.randn(2, 3, 32, 32)).shape
    torch.Size([2, 10])
"""

from __future__ import annotations

from collections import OrderedDict

from torch import Tensor, nn

from torchbop.models._family import FamilyModel, scaled
from torchbop.nn.blocks import binary_conv2d
from torchbop.quantizers import SteSign

__all__ = ["BinaryResNet18", "BinaryBasicBlock"]


class BinaryBasicBlock(nn.Module):
    r"""ResNet's basic block with binary 3x3 convolutions and a real shortcut (IR-Net's CIFAR ResNet-18 block).

    Args:
        in_channels, out_channels: channels of the input and the output.
        stride: stride of the first convolution and of the shortcut's 1x1 convolution.
        mode: ``"bop"`` or ``"latent"``.
        scale: the binary convolutions' weight scale (contract A); default ``None``.

    Example:
        >>> block = BinaryBasicBlock(4, 8, stride=2)
        >>> [type(m).__name__ for m in block.shortcut]
        ['Conv2d', 'BatchNorm2d']
    """

    def __init__(
        self, in_channels: int, out_channels: int, stride: int = 1, *, mode: str = "bop", scale: str | None = None
    ) -> None:
        super().__init__()
        if stride not in (1, 2) or isinstance(stride, bool):
            raise ValueError(f"Invalid stride: {stride!r} (must be 1 or 2)")
        self.conv1 = binary_conv2d(
            in_channels, out_channels, 3, stride, mode=mode, scale=scale, input_quantizer=SteSign()
        )
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.act1 = nn.Hardtanh()
        self.conv2 = binary_conv2d(out_channels, out_channels, 3, mode=mode, scale=scale, input_quantizer=SteSign())
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False), nn.BatchNorm2d(out_channels)
            )
        self.act2 = nn.Hardtanh()

    def forward(self, x: Tensor) -> Tensor:
        out = self.act1(self.bn1(self.conv1(x)))
        return self.act2(self.bn2(self.conv2(out)) + self.shortcut(x))


class BinaryResNet18(FamilyModel):
    r"""The binary CIFAR-10 ResNet-18 of IR-Net's code; see the module docstring.

    Args:
        mode: ``"bop"`` (+-1 weights trained by Bop) or ``"latent"`` (latent weights, straight-through sign).
        stem: ``"cifar10"`` only (32 x 32 images).
        num_classes: outputs; ``None``: 10.
        width: multiplier > 0 of every channel count.
        channels_last: compute in ``torch.channels_last``.
        scale: the binary convolutions' weight scale (contract A); default ``None`` in both modes.

    Example:
        >>> model = BinaryResNet18()
        >>> [stage[0].conv1.stride[0] for stage in list(model.features)[1:]]
        [1, 2, 2, 2]
        >>> BinaryResNet18(stem="imagenet")
        Traceback (most recent call last):
        ...
        ValueError: Invalid stem: 'imagenet' for binary_resnet18 (a CIFAR-10 network: use stem='cifar10')
    """

    def __init__(
        self,
        mode: str = "bop",
        stem: str = "cifar10",
        num_classes: int | None = None,
        width: float = 1.0,
        channels_last: bool = True,
        scale: str | None = None,
    ) -> None:
        if stem != "cifar10":
            raise ValueError(f"Invalid stem: {stem!r} for binary_resnet18 (a CIFAR-10 network: use stem='cifar10')")
        super().__init__(mode=mode, stem=stem, num_classes=num_classes, width=width, channels_last=channels_last)
        base = scaled(64, width)
        stages: OrderedDict[str, nn.Module] = OrderedDict(
            stem=nn.Sequential(OrderedDict(conv=nn.Conv2d(3, base, 3, 1, 1, bias=False), bn=nn.BatchNorm2d(base)))
        )
        channels = base
        for s in range(4):
            out = base * 2**s
            stride = 2 if s > 0 else 1
            stages[f"stage{s + 1}"] = nn.Sequential(
                BinaryBasicBlock(channels, out, stride, mode=mode, scale=scale),
                BinaryBasicBlock(out, out, mode=mode, scale=scale),
            )
            channels = out
        self.features = nn.Sequential(stages)
        # IR-Net: F.avg_pool2d(out, 4) on the 4 x 4 maps, then BatchNorm1d(512) and the linear layer.
        self.head = nn.Sequential(
            nn.AvgPool2d(4), nn.Flatten(), nn.BatchNorm1d(channels), nn.Linear(channels, self.num_classes)
        )
