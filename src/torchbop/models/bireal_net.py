r"""Bi-Real Net 18 (Liu et al., "Bi-Real Net: Enhancing the Performance of 1-bit CNNs", ECCV 2018,
arXiv:1808.00278) as Larq Zoo defines it (larq/zoo, ``larq_zoo/literature/birealnet.py``).

======================================  ==================  =====================================================
layer                                   output (ImageNet)   notes
======================================  ==================  =====================================================
Conv2d 7x7/2 3->64, BN, MaxPool 3x3/2   64 x 56 x 56        real stem (no bias)
4 x BiRealBlock 64                      64 x 56 x 56        identity shortcuts
BiRealBlock 64->128 /2, 3 x 128         128 x 28 x 28       first: shortcut avgpool 2x2, real 1x1 conv, BN
BiRealBlock 128->256 /2, 3 x 256        256 x 14 x 14
BiRealBlock 256->512 /2, 3 x 512        512 x 7 x 7
global average pool, Linear 512->1000   1000                real dense layer with bias: the logits
======================================  ==================  =====================================================

Each :class:`~torchbop.nn.BiRealBlock` is ``BN(binary conv 3x3(approx_sign(x))) + shortcut(x)``, 16 binary
convolutions in all (10,985,472 binary weights). Batch norm is Keras' with ``momentum=0.8`` (torch momentum 0.2) and
eps 1e-3, with scale and shift. With its running statistics the network has 11,699,112 parameters, the number Larq
Zoo's docstring gives. Convolutions start Glorot-normal (Larq's ``kernel_initializer``; torch's untruncated
``xavier_normal_``), the dense layer Glorot-uniform with zero bias (Keras' defaults). Padding is torch's symmetric
padding, as in the authors' PyTorch code; Keras' "same" pads one more pixel bottom-right on the strided layers (same
shapes and counts, shifted windows).

Weights: Larq trains latent weights with ``magnitude_aware_sign`` (sign times the per-channel mean |W|, clipped
latent weights). ``mode="latent"`` does the same: ``scale="mean_abs"`` (contract A) and a straight-through sign, with
:func:`torchbop.nn.clip_latent_weights_` left to the training loop. In ``mode="bop"`` the weights are +-1 and the
default is no scale (``scale=None``): every binary convolution is followed by batch norm over the same channels,
which cancels a per-channel factor, so a scale adds nothing but arithmetic (pass ``scale="learnable"`` to train one
anyway).

``stem="cifar10"`` (32 x 32 images, 10 classes) replaces the stem by a real 3x3 stride-1 convolution and batch norm
without max pooling, as CIFAR-10 versions of ResNet-18-style BNNs do (IR-Net, arXiv:1909.10788, htqin/IR-Net
``CIFAR-10/ResNet18/resnet.py``): the stages run at 32, 16, 8 and 4 pixels. ``width`` multiplies the base channel
count 64 (rounded, at least 1); the stages keep their ratios 1:2:4:8.

Example:
    >>> import torch
    >>> from torchbop.nn import named_binary_parameters
    >>> model = BiRealNet18()
    >>> sum(w.numel() for _, w in named_binary_parameters(model))
    10985472
    >>> BiRealNet18(stem="cifar10", width=0.125)(torch.randn(2, 3, 32, 32)).shape
    torch.Size([2, 10])
"""

from __future__ import annotations

from collections import OrderedDict
from functools import partial

import torch
from torch import nn

from torchbop.models._family import FamilyModel, resolve_scale, scaled
from torchbop.nn.blocks import BiRealBlock
from torchbop.quantizers import sign

__all__ = ["BiRealNet18", "BLOCKS_PER_STAGE"]

#: Blocks per stage; stage s has 64 * 2**s channels (times ``width``) and its first block halves the size (s > 0).
BLOCKS_PER_STAGE = (4, 4, 4, 4)


class BiRealNet18(FamilyModel):
    r"""Bi-Real Net 18 as Larq Zoo defines it; see the module docstring.

    Args:
        mode: ``"bop"`` (+-1 weights trained by Bop) or ``"latent"`` (latent weights, Larq's magnitude-aware sign).
        stem: ``"imagenet"`` (224 x 224, as published) or ``"cifar10"`` (32 x 32: 3x3 stride-1 stem, no max pool).
        num_classes: outputs; ``None``: 1000 for ImageNet, 10 for CIFAR-10.
        width: multiplier > 0 of every channel count.
        channels_last: compute in ``torch.channels_last``.
        scale: the binary convolutions' weight scale; ``"auto"``: ``"mean_abs"`` in latent mode, ``None`` in Bop
            mode.

    Example:
        >>> stem = BiRealNet18(stem="cifar10", width=0.25).features.stem
        >>> stem.conv
        Conv2d(3, 16, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1), bias=False)
        >>> stem.bn.eps, stem.bn.momentum, len(stem)
        (0.001, 0.2, 2)
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
        norm = partial(nn.BatchNorm2d, eps=1e-3, momentum=0.2)  # Keras BatchNormalization(momentum=0.8)
        block = partial(BiRealBlock, mode=mode, scale=resolve_scale(scale, mode), norm_layer=norm)
        base = scaled(64, width)
        if stem == "imagenet":
            stem_layers = OrderedDict(
                conv=nn.Conv2d(3, base, 7, 2, 3, bias=False), bn=norm(base), pool=nn.MaxPool2d(3, 2, 1)
            )
        else:
            stem_layers = OrderedDict(conv=nn.Conv2d(3, base, 3, 1, 1, bias=False), bn=norm(base))
        stages: OrderedDict[str, nn.Module] = OrderedDict(stem=nn.Sequential(stem_layers))
        channels = base
        for s, n in enumerate(BLOCKS_PER_STAGE):
            out = base * 2**s
            blocks = [block(channels, out, 2 if s > 0 else 1)] + [block(out, out) for _ in range(n - 1)]
            stages[f"stage{s + 1}"] = nn.Sequential(*blocks)
            channels = out
        self.features = nn.Sequential(stages)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, self.num_classes))
        self._init_as_larq()

    @torch.no_grad()
    def _init_as_larq(self) -> None:
        """Glorot-normal convolutions (binarized in Bop mode), Glorot-uniform dense layer, zero bias."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.xavier_normal_(module.weight)
                if getattr(module, "is_binary", False) and module.mode == "bop":
                    module.weight.copy_(sign(module.weight))
            elif isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
