r"""Residual building blocks of binary networks: :class:`BiRealBlock` (Bi-Real Net) and :class:`ReActNetBlock`
(ReActNet-A). Their forwards are convolutions, batch norms, activations, adds and ``torch.cat``: no Python control
flow on tensor values, so ``torch.fx`` can trace them.

**Bi-Real block** (Liu et al., "Bi-Real Net", ECCV 2018, arXiv:1808.00278, Fig. 1 and Sec. 3.1): a real identity
shortcut around *each* binary 3x3 convolution, so that the real activations before the sign reach the next block:

.. math::
    y = \operatorname{BN}(W_b \circledast \operatorname{sign}(x)) + s(x),

with :math:`s` the identity, or, when the block downsamples (stride 2 or a change of channels), a 2x2 average pooling
(stride 2), a real 1x1 convolution and batch norm, as in Larq Zoo (larq/zoo, ``larq_zoo/literature/birealnet.py``)
and the authors' PyTorch code (liuzechun/Bi-Real-net; liuzechun/ReActNet, ``resnet/1_step1/birealnet.py``). The sign
is :class:`~torchbop.quantizers.ApproxSign` (Bi-Real Net's piecewise-polynomial estimator, Larq's ``approx_sign``).

**ReActNet block** (Liu et al., "ReActNet", ECCV 2020, arXiv:2003.03488, Fig. 2 and Sec. 3.1): two binary
convolutions, each with its own shortcut, RSign and RPReLU:

.. math::
    h &= \operatorname{RPReLU}_1\big(\operatorname{BN}_1(W_{3\times3} \circledast \operatorname{RSign}_1(x))
         + \operatorname{pool}(x)\big), \\
    y &= \operatorname{RPReLU}_2\big(\operatorname{BN}_2(W_{1\times1} \circledast \operatorname{RSign}_2(h))
         + [h, h]_{\text{if } C_{out} = 2C_{in}} \big),

where the 3x3 convolution keeps the channels (:math:`C_{in} \to C_{in}`, stride 1 or 2), :math:`\operatorname{pool}`
is a 2x2 average pooling when strided (the identity otherwise), and the 1x1 convolution either keeps the channels
(shortcut :math:`h`) or doubles them. This matches the authors' ``BasicBlock`` (liuzechun/ReActNet,
``mobilenet/2_step2/reactnet.py``) layer for layer: ``move11 + BinaryActivation`` is ``RSign_1``, ``move12 + prelu1
+ move13`` is ``RPReLU_1``, ``move21 + BinaryActivation`` is ``RSign_2``, ``move22 + prelu2 + move23`` is
``RPReLU_2``, batch norm has torch's defaults. Where the channels double, the authors run two :math:`C \to C`
1x1 convolutions (``binary_pw_down1/2``) on the same binarized input, each followed by its own batch norm and plus
:math:`h`, and concatenate. Here that is *one* :math:`C \to 2C` convolution followed by one batch norm over
:math:`2C` channels and plus :math:`[h, h]`: the same function (output channels :math:`c < C` are the first
convolution, :math:`c \ge C` the second; batch norm is per channel), the same parameters and the same MACs, but one
binary layer, whose input quantizer (the shared ``RSign_2``) the summary and the exporter see. Two differences of
detail from the authors' code: sign(0) is +1 (``torch.sign`` gives 0), and binary weights start from torchbop's
initialisation, not from the authors' ``rand * 0.001`` latent weights (all positive: in Bop mode every weight
would start at +1).

Weight scaling (contract A): ``scale`` goes to every binary convolution. Each is followed by batch norm over the
same channels, which cancels a positive per-channel factor in training (up to batch norm's eps), so the scale
matters little; the models pass ``"mean_abs"`` in latent mode, as Larq's ``magnitude_aware_sign`` and the authors'
``HardBinaryConv`` do, and ``None`` in Bop mode.

Example:
    >>> import torch
    >>> block = ReActNetBlock(8, 16, stride=2)
    >>> block(torch.randn(2, 8, 8, 8)).shape
    torch.Size([2, 16, 4, 4])
    >>> BiRealBlock(8, 16, stride=2)(torch.randn(2, 8, 8, 8)).shape
    torch.Size([2, 16, 4, 4])
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from torchbop.nn.activations import RPReLU, RSign
from torchbop.nn.layers import BinaryConv2d
from torchbop.quantizers import ApproxSign

__all__ = ["BiRealBlock", "ReActNetBlock", "binary_conv2d"]


def binary_conv2d(
    in_channels: int,
    out_channels: int,
    kernel_size: int,
    stride: int = 1,
    *,
    mode: str = "bop",
    scale: str | None = None,
    input_quantizer: nn.Module | None,
) -> BinaryConv2d:
    """A bias-free ``BinaryConv2d`` with 'same' padding (``kernel_size // 2``) and the given weight ``scale``."""
    return BinaryConv2d(
        in_channels,
        out_channels,
        kernel_size,
        stride,
        padding=kernel_size // 2,
        bias=False,
        mode=mode,
        input_quantizer=input_quantizer,
        scale=scale,
    )


def _check_int(name: str, value: object, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"Invalid {name}: {value!r} (must be an int >= {minimum})")
    return value


def _check_stride(stride: object) -> int:
    if stride not in (1, 2) or isinstance(stride, bool):
        raise ValueError(f"Invalid stride: {stride!r} (must be 1 or 2)")
    return int(stride)  # type: ignore[call-overload]


class BiRealBlock(nn.Module):
    r"""One binary 3x3 convolution with a real shortcut: ``BN(conv(sign(x))) + shortcut(x)`` (arXiv:1808.00278).

    Args:
        in_channels, out_channels: channels of the input and the output.
        stride: 1, or 2 to halve the spatial size.
        mode: ``"bop"`` or ``"latent"`` (see :class:`~torchbop.nn.BinaryConv2d`).
        scale: the binary convolution's weight scale (contract A): ``None``, ``"mean_abs"``, ``"fixed"`` or
            ``"learnable"``.
        norm_layer: builds a batch norm from a channel count (default ``nn.BatchNorm2d``; Bi-Real Net as in Larq
            Zoo uses eps 1e-3 and torch momentum 0.2, Keras' ``momentum=0.8``).

    The shortcut is the identity when ``stride == 1`` and the channels stay, else average pooling (``stride x
    stride``, skipped at stride 1), a real 1x1 convolution without bias, and batch norm.

    Example:
        >>> block = BiRealBlock(4, 4)
        >>> type(block.shortcut).__name__, type(block.conv.input_quantizer).__name__
        ('Identity', 'ApproxSign')
        >>> [type(m).__name__ for m in BiRealBlock(4, 8, stride=2).shortcut]
        ['AvgPool2d', 'Conv2d', 'BatchNorm2d']
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int = 1,
        *,
        mode: str = "bop",
        scale: str | None = None,
        norm_layer: Callable[[int], nn.Module] = nn.BatchNorm2d,
    ) -> None:
        super().__init__()
        _check_int("in_channels", in_channels)
        _check_int("out_channels", out_channels)
        stride = _check_stride(stride)
        self.conv = binary_conv2d(
            in_channels, out_channels, 3, stride, mode=mode, scale=scale, input_quantizer=ApproxSign()
        )
        self.bn = norm_layer(out_channels)
        self.shortcut: nn.Module
        if stride == 1 and in_channels == out_channels:
            self.shortcut = nn.Identity()
        else:
            pool: list[nn.Module] = [nn.AvgPool2d(stride)] if stride > 1 else []
            self.shortcut = nn.Sequential(
                *pool, nn.Conv2d(in_channels, out_channels, 1, bias=False), norm_layer(out_channels)
            )

    def forward(self, x: Tensor) -> Tensor:
        return self.bn(self.conv(x)) + self.shortcut(x)


class ReActNetBlock(nn.Module):
    r"""ReActNet-A's block: a binary 3x3 and a binary 1x1 convolution, each with a shortcut, RSign and RPReLU
    (arXiv:2003.03488; the module docstring gives the equations and the comparison with the authors' code).

    Args:
        in_channels: :math:`C`, channels of the input (and of the 3x3 convolution's output).
        out_channels: :math:`C` or :math:`2C`.
        stride: 1, or 2 (the 3x3 convolution is strided and its shortcut average-pooled 2x2).
        mode: ``"bop"`` or ``"latent"``.
        scale: the binary convolutions' weight scale (contract A).
        norm_layer: builds a batch norm from a channel count (default ``nn.BatchNorm2d``, as the authors).

    Example:
        >>> block = ReActNetBlock(4, 8)
        >>> block.conv1x1
        BinaryConv2d(
          4, 8, kernel_size=(1, 1), stride=(1, 1), bias=False, mode=bop
          (input_quantizer): RSign(
            4
            (quantizer): ApproxSign()
          )
        )
        >>> block.duplicate, type(block.pool).__name__
        (True, 'Identity')
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int = 1,
        *,
        mode: str = "bop",
        scale: str | None = None,
        norm_layer: Callable[[int], nn.Module] = nn.BatchNorm2d,
    ) -> None:
        super().__init__()
        _check_int("in_channels", in_channels)
        _check_int("out_channels", out_channels)
        if out_channels not in (in_channels, 2 * in_channels):
            raise ValueError(f"Invalid out_channels: {out_channels} (must be in_channels={in_channels} or twice it)")
        stride = _check_stride(stride)
        self.conv3x3 = binary_conv2d(
            in_channels, in_channels, 3, stride, mode=mode, scale=scale, input_quantizer=RSign(in_channels)
        )
        self.bn1 = norm_layer(in_channels)
        self.pool = nn.AvgPool2d(2) if stride == 2 else nn.Identity()
        self.act1 = RPReLU(in_channels)
        self.conv1x1 = binary_conv2d(
            in_channels, out_channels, 1, mode=mode, scale=scale, input_quantizer=RSign(in_channels)
        )
        self.bn2 = norm_layer(out_channels)
        self.act2 = RPReLU(out_channels)
        #: True where the 1x1 convolution doubles the channels (shortcut ``[h, h]``); fixed at construction.
        self.duplicate = out_channels == 2 * in_channels

    def forward(self, x: Tensor) -> Tensor:
        h = self.act1(self.bn1(self.conv3x3(x)) + self.pool(x))
        shortcut = torch.cat([h, h], dim=1) if self.duplicate else h
        return self.act2(self.bn2(self.conv1x1(h)) + shortcut)
