r"""QuickNet, QuickNetSmall and QuickNetLarge: Larq Zoo's binary ResNet-style networks for fast inference.

QuickNet is the network of Bannink et al., "Larq Compute Engine: Design, Benchmark, and Deploy State-of-the-Art
Binarized Neural Networks" (arXiv:2011.09398). The definition compared here, layer by layer, is
``larq_zoo/sota/quicknet.py`` of the repository larq/zoo (commit 0ff59843, the ``v1.0`` weights; the ``v1.0.0``
version of the file builds the same layers): ``QuickNetFactory`` (``stem_module``, ``residual_block``,
``transition_block``, ``build``) and its subclasses ``QuickNetSmallFactory`` (other filters) and
``QuickNetLargeFactory`` (other block counts). The Larq Compute Engine guide (docs.larq.dev, "Optimizing models for
Larq Compute Engine") gives the reason for the order binary convolution -> ReLU -> batch norm: the converter fuses it.

==============  ==============  ==================  ============  ====================  ========
variant         section blocks  section filters     Larq Zoo      torchbop.summary      top-1
                                                    parameters    (params + BN stats)
==============  ==============  ==================  ============  ====================  ========
QuickNetSmall   4, 4, 4, 4      32, 64, 256, 512    12 655 688    12 664 344            59.4 %
QuickNet        4, 4, 4, 4      64, 128, 256, 512   13 234 088    13 243 720            63.3 %
QuickNetLarge   6, 8, 12, 6     64, 128, 256, 512   23 342 248    23 359 304            66.9 %
==============  ==============  ==================  ============  ====================  ========

Larq Zoo's counts (and its memory, 4.00 / 4.17 / 5.40 MB) come from Larq's summary (larq/larq, ``larq/models.py``,
``LayerProfile``), which folds batch norm for inference: it drops a batch norm's beta and gamma where the layer also
has the moving mean and variance. :func:`torchbop.summary` counts all four, so it counts 2 more per channel of every
affine batch norm (4,328 / 4,816 / 8,528 channels): +8,656, +9,632 and +17,056. Top-1 is the ImageNet accuracy of
Larq Zoo's weights as its docstrings give it (QuickNetLarge: 66.9 % in the ``v1.0`` file, 66.0 % in ``v1.0.0``).

The network, with F = section filters, B = section blocks and the feature map of a 224 x 224 image:

- **Stem** (``stem_module``): real 3x3 convolution 3 -> F0/4, stride 2, "same", no bias (112 x 112); batch norm
  (Keras defaults: eps 1e-3, momentum 0.99 = torch 0.01); ReLU; real 3x3 *depthwise* convolution, stride 2, "same",
  no bias (56 x 56); batch norm without scale or shift (``affine=False``: running statistics only); real 1x1
  convolution F0/4 -> F0, no bias; batch norm (Keras defaults).
- **Residual block** (``residual_block``), B_s per section: :class:`~torchbop.nn.BinaryConv2d` C -> C, 3x3, stride 1,
  padded with **+1** (``padding=1, pad_value=1.0``: Larq's ``pad_values=1.0``), no bias, input quantizer
  ``SteSign(clip_value=1.25)``; ReLU (the convolution's ``activation="relu"``); batch norm (eps 1e-5, momentum 0.9 =
  torch 0.1); added to the block's input.
- **Transition block** (``transition_block``), before the first block of each section whose filters differ from the
  previous section's (sections 1, 2, 3 in all three variants): ReLU; 2x2 max pooling with *stride 1* and no padding
  (56 -> 55); 3x3 depthwise convolution, stride 2, "same", no bias, *frozen* at the blur kernel
  ``[1, 2, 1]^T [1, 2, 1] / 16`` (``blurpool_initializer``, ``trainable=False``; Zhang, arXiv:1904.11486) (55 -> 28);
  real 1x1 convolution C_in -> C_out, no bias; batch norm (eps 1e-5, torch momentum 0.1). Feature maps: 56, 28, 14, 7.
- **Head**: ReLU; global average pooling; dense layer F3 -> classes *with* bias (``QuantDense`` without quantizers).
  Larq's final softmax is left to the loss: the model returns logits.

Weights start as Larq Zoo's initializers: ``he_normal`` for the stem's two full convolutions, ``glorot_uniform``
(Keras' default) for its depthwise convolution, ``glorot_normal`` for the binary convolutions, the transitions' 1x1
convolutions and the dense layer (Keras' normals are truncated at two standard deviations); zero dense bias.

The binary convolutions come in two modes (the training engine passes ``mode``):

- ``mode="bop"``: the weights *are* +-1, trained by Bop (Helwegen et al., arXiv:1906.02107); no latent weights.
- ``mode="latent"``: real latent weights binarized by ``SteSign(clip_value=1.25)`` in forward, as Larq Zoo trains
  them. Larq Zoo also constrains them with ``WeightClip(clip_value=1.25)``: the matching call after each optimizer
  step is ``torchbop.nn.clip_latent_weights_(model, bound=model.latent_weight_bound)`` (1.25, not the default 1.0),
  which ``torchbop train`` makes (it clips at a model's ``latent_weight_bound`` where the model declares one).

Input sizes (``stem``):

- ``"imagenet"`` (default): 224 x 224 images, 1000 classes, as published. Keras' "same" padding at stride 2 on an
  even size pads one row and column *after* the image only, so the stem's two stride-2 layers are preceded by
  ``nn.ZeroPad2d((0, 1, 0, 1))`` (exact for even sizes, such as 224 and 112). The transitions' depthwise convolutions
  see odd sizes (55, 27, 13), where "same" pads one on each side: ``padding=1``.
- ``"cifar10"``: 32 x 32 images, 10 classes. The stem's two stride-2 layers run at stride 1 ("same" padding: 1 on
  each side), so the first section sees the full 32 x 32 image and the sections 32, 16, 8, 4; everything else is
  as published. (Downsampling 32 x 32 by 4 in the stem would leave 2 x 2 maps in the last section.)

``width`` multiplies every channel count (rounded, at least 1; the stem's first convolution has
``round(width * F0 / 4)``); the transitions stay where the published filters change, whatever the width.

Memory format: as :class:`~torchbop.models.BinaryNet`, ``channels_last=True`` puts the input in
``torch.channels_last`` (with ``x.contiguous(memory_format=...)``, which ``torch.fx`` records) and sets
``self.memory_format`` so the training engine's loader produces that layout. Parameters keep torch's layout.

The forward is modules and adds only, with no Python branch on tensor values, so ``torch.fx`` traces it.

Example:
    >>> import torch
    >>> from torchbop.nn import named_binary_parameters
    >>> model = QuickNet()
    >>> sum(w.numel() for _, w in named_binary_parameters(model))  # 36 * (64^2 + 128^2 + 256^2 + 512^2)
    12533760
    >>> QuickNetSmall(stem="cifar10", width=0.25)(torch.randn(2, 3, 32, 32)).shape
    torch.Size([2, 10])
"""

from __future__ import annotations

import math
from collections import OrderedDict

import torch
from torch import Tensor, nn

from torchbop.models._family import FamilyModel, scaled
from torchbop.nn import BinaryConv2d
from torchbop.quantizers import SteSign, sign

__all__ = ["QuickNet", "QuickNetSmall", "QuickNetLarge", "ResidualBlock", "STEMS", "LATENT_WEIGHT_BOUND", "CLIP_VALUE"]

#: Input sizes (and default class counts) the stem is built for.
STEMS = {"imagenet": 1000, "cifar10": 10}  # stem -> classes (the arguments are checked by FamilyModel)
#: ``clip_value`` of the SteSign input and weight quantizers (Larq Zoo's ``SteSign(clip_value=1.25)``).
CLIP_VALUE = 1.25
#: Larq Zoo's ``WeightClip(clip_value=1.25)`` on latent weights: pass it to ``clip_latent_weights_`` in latent mode.
LATENT_WEIGHT_BOUND = 1.25


def _bn(channels: int, keras_default: bool = False, affine: bool = True) -> nn.BatchNorm2d:
    """Keras' ``BatchNormalization()`` (eps 1e-3, momentum 0.99) or ``(momentum=0.9, epsilon=1e-5)``, in torch's
    terms (torch's momentum weighs the new batch: 1 - Keras' momentum)."""
    if keras_default:
        return nn.BatchNorm2d(channels, eps=1e-3, momentum=0.01, affine=affine)
    return nn.BatchNorm2d(channels, eps=1e-5, momentum=0.1, affine=affine)


def _blur_conv(channels: int) -> nn.Conv2d:
    """The transitions' frozen 3x3 depthwise blur, stride 2, padding 1: ``[1, 2, 1]^T [1, 2, 1] / 16`` per channel."""
    conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1, groups=channels, bias=False)
    k = torch.tensor([1.0, 2.0, 1.0])
    with torch.no_grad():
        conv.weight.copy_((torch.outer(k, k) / 16).expand(channels, 1, 3, 3))
    conv.weight.requires_grad_(False)  # Larq Zoo: trainable=False
    return conv


def _keras_normal_(weight: Tensor, scale: float, fan: str) -> None:
    """Keras' ``VarianceScaling(scale, mode=fan, distribution="truncated_normal")``: he_normal is (2, "fan_in"),
    glorot_normal (1, "fan_avg"). The normal is truncated at two standard deviations and widened to keep the
    variance ``scale / n``."""
    fan_in = weight[0].numel()
    fan_out = weight.shape[0] * weight[0, 0].numel() if weight.dim() > 2 else weight.shape[0]
    n = fan_in if fan == "fan_in" else (fan_in + fan_out) / 2
    std = math.sqrt(scale / n) / 0.87962566103423978
    nn.init.trunc_normal_(weight, 0.0, std, -2 * std, 2 * std)


class ResidualBlock(nn.Module):
    """QuickNet's residual block: ``x + BN(ReLU(BinaryConv3x3(x)))``, the convolution padded with +1.

    Args:
        channels: input = output channels.
        mode: ``"bop"`` or ``"latent"`` (see the module docstring).

    Example:
        >>> block = ResidualBlock(8)
        >>> block.conv.pad_value, block.conv.input_quantizer
        (1.0, SteSign(clip_value=1.25))
        >>> block(torch.randn(2, 8, 5, 5)).shape
        torch.Size([2, 8, 5, 5])
    """

    def __init__(self, channels: int, mode: str = "bop") -> None:
        super().__init__()
        self.conv = BinaryConv2d(
            channels,
            channels,
            3,
            padding=1,
            bias=False,
            mode=mode,
            pad_value=1.0,
            input_quantizer=SteSign(CLIP_VALUE),
            weight_quantizer=SteSign(CLIP_VALUE) if mode == "latent" else None,
        )
        self.act = nn.ReLU()
        self.bn = _bn(channels)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.bn(self.act(self.conv(x)))


class QuickNet(FamilyModel):
    r"""QuickNet (Larq Zoo); see the module docstring for the layers, the stems and what was compared.

    Args:
        mode: ``"bop"`` (binary weights trained by Bop) or ``"latent"`` (latent weights binarized by
            ``SteSign(1.25)``, trained by SGD/Adam).
        stem: ``"imagenet"`` (224 x 224, as published) or ``"cifar10"`` (32 x 32, the stem at stride 1).
        num_classes: outputs; ``None``: 1000 for ``"imagenet"``, 10 for ``"cifar10"``.
        width: multiplier > 0 of every channel count.
        channels_last: compute in ``torch.channels_last`` (NHWC activations).

    Example:
        >>> model = QuickNet(width=0.25)
        >>> model(torch.randn(1, 3, 224, 224)).shape
        torch.Size([1, 1000])
        >>> [len(model.features[i]) for i in range(1, 5)]  # a transition + 4 blocks in sections 1-3
        [4, 5, 5, 5]
    """

    #: Residual blocks per section.
    section_blocks: tuple[int, ...] = (4, 4, 4, 4)
    #: Channels of each section (the stem ends with ``section_filters[0]``).
    section_filters: tuple[int, ...] = (64, 128, 256, 512)
    #: Larq Zoo's ``WeightClip`` bound for latent weights (for ``clip_latent_weights_(model, bound=...)``).
    latent_weight_bound: float = LATENT_WEIGHT_BOUND

    def __init__(
        self,
        mode: str = "bop",
        stem: str = "imagenet",
        num_classes: int | None = None,
        width: float = 1.0,
        channels_last: bool = True,
    ) -> None:
        super().__init__(mode=mode, stem=stem, num_classes=num_classes, width=width, channels_last=channels_last)
        num_classes = self.num_classes

        filters = [scaled(f, width) for f in self.section_filters]
        mid = scaled(self.section_filters[0] // 4, width)
        sections: list[tuple[str, nn.Module]] = [("stem", self._stem(stem, mid, filters[0]))]
        previous = self.section_filters[0]
        for s, (blocks, f, f_scaled) in enumerate(zip(self.section_blocks, self.section_filters, filters)):
            layers: list[tuple[str, nn.Module]] = []
            if f != previous:  # Larq: a transition wherever the filters change (decided at the published width)
                in_ch = filters[s - 1]
                layers.append(
                    (
                        "transition",
                        nn.Sequential(
                            OrderedDict(
                                act=nn.ReLU(),
                                pool=nn.MaxPool2d(2, stride=1),
                                blur=_blur_conv(in_ch),
                                conv=nn.Conv2d(in_ch, f_scaled, 1, bias=False),
                                bn=_bn(f_scaled),
                            )
                        ),
                    )
                )
                previous = f
            layers += [(f"block{b}", ResidualBlock(f_scaled, mode)) for b in range(blocks)]
            sections.append((f"section{s}", nn.Sequential(OrderedDict(layers))))
        self.features = nn.Sequential(OrderedDict(sections))
        self.head = nn.Sequential(
            OrderedDict(
                act=nn.ReLU(),
                pool=nn.AdaptiveAvgPool2d(1),
                flatten=nn.Flatten(),
                fc=nn.Linear(filters[-1], num_classes),
            )
        )
        self._init_weights()

    @staticmethod
    def _stem(stem: str, mid: int, out: int) -> nn.Sequential:
        """Real conv 3x3 /2, BN, ReLU, depthwise 3x3 /2, BN (statistics only), conv 1x1, BN; stride 1 for CIFAR."""
        if stem == "imagenet":  # Keras "same" at stride 2 on an even size: one row/column after the image
            conv_pad = [("pad", nn.ZeroPad2d((0, 1, 0, 1)))]
            dw_pad = [("dw_pad", nn.ZeroPad2d((0, 1, 0, 1)))]
            stride, padding = 2, 0
        else:
            conv_pad, dw_pad, stride, padding = [], [], 1, 1
        return nn.Sequential(
            OrderedDict(
                [
                    *conv_pad,
                    ("conv", nn.Conv2d(3, mid, 3, stride=stride, padding=padding, bias=False)),
                    ("bn", _bn(mid, keras_default=True)),
                    ("act", nn.ReLU()),
                    *dw_pad,
                    ("dw", nn.Conv2d(mid, mid, 3, stride=stride, padding=padding, groups=mid, bias=False)),
                    ("dw_bn", _bn(mid, keras_default=True, affine=False)),
                    ("pw", nn.Conv2d(mid, out, 1, bias=False)),
                    ("pw_bn", _bn(out, keras_default=True)),
                ]
            )
        )

    @torch.no_grad()
    def _init_weights(self) -> None:
        """Larq Zoo's initializers (see the module docstring); bop-mode binary weights are then binarized."""
        stem = self.features.stem
        _keras_normal_(stem.conv.weight, 2.0, "fan_in")
        nn.init.xavier_uniform_(stem.dw.weight)  # Keras' glorot_uniform (same fan_in + fan_out for depthwise)
        _keras_normal_(stem.pw.weight, 2.0, "fan_in")
        for module in self.modules():
            if isinstance(module, BinaryConv2d):
                _keras_normal_(module.weight, 1.0, "fan_avg")
                if module.mode == "bop":
                    module.weight.copy_(sign(module.weight))
        for section in list(self.features)[1:]:
            if hasattr(section, "transition"):
                _keras_normal_(section.transition.conv.weight, 1.0, "fan_avg")
        _keras_normal_(self.head.fc.weight, 1.0, "fan_avg")
        nn.init.zeros_(self.head.fc.bias)


class QuickNetSmall(QuickNet):
    """QuickNetSmall (Larq Zoo): QuickNet with section filters 32, 64, 256, 512.

    Example:
        >>> QuickNetSmall().features.stem.conv.out_channels  # 32 / 4
        8
    """

    section_filters = (32, 64, 256, 512)


class QuickNetLarge(QuickNet):
    """QuickNetLarge (Larq Zoo): QuickNet with 6, 8, 12, 6 residual blocks per section.

    Example:
        >>> [len(s) for s in QuickNetLarge(width=0.125).features][1:]  # sections 1-3 start with a transition
        [6, 9, 13, 7]
    """

    section_blocks = (6, 8, 12, 6)
