r"""Binary layers: drop-in subclasses of ``nn.Conv1d``, ``nn.Conv2d`` and ``nn.Linear`` with binary weights and inputs.

A binary layer computes

.. math::
    y = q_w(W) \star q_x(x) + b \qquad\text{or, with a weight scale,}\qquad
    y_c = \alpha_c \, (q_w(W) \star q_x(x))_c + b_c

with :math:`q_x` the ``input_quantizer`` (default :class:`~torchbop.quantizers.SteSign`; ``None`` for a first layer
whose input is real, such as image pixels) and :math:`q_w` the ``weight_quantizer``. How :math:`W` is stored is set by
``mode``:

- ``mode="bop"`` (default): ``weight`` *is* the binary weight. It holds exactly -1 and +1 and is used as is
  (``weight_quantizer=None``); its gradient is the gradient with respect to the binary weight, which Bop accumulates
  and uses to flip signs. There are no latent weights ("Latent Weights Do Not Exist", arXiv:1906.02107).
- ``mode="latent"``: ``weight`` is a real latent weight :math:`\theta_r`, binarized in every forward by
  ``weight_quantizer`` (default :class:`~torchbop.quantizers.SteSign`), trained by SGD or Adam, and clipped to [-1, 1]
  after each step with :func:`torchbop.nn.clip_latent_weights_` (Courbariaux et al., arXiv:1602.02830).

Binary layers carry ``is_binary = True`` and ``mode``; :func:`torchbop.nn.split_binary_params` finds them by that.

**Weight scaling** (``scale=``). A binary weight tensor has lost the magnitude of the real weights; XNOR-Net (Rastegari
et al., arXiv:1603.05279, eq. 4) restores it with one factor per output channel, the optimal L2 approximation
:math:`W_c \approx \alpha_c \operatorname{sign}(W_c)` with :math:`\alpha_c = \frac{1}{n} \lVert W_c \rVert_1`, the mean
absolute value of the channel's real weights. Since :math:`\alpha_c` is one number per output channel, it can be
applied to the output instead of the weight, :math:`(\alpha \odot \operatorname{sign} W) \star x = \alpha \odot
(\operatorname{sign} W \star x)`, which keeps the convolution itself binary (the packed exporter needs that):

- ``scale=None`` (default): no factor; the forward is exactly the unscaled one (bias inside the convolution call).
- ``scale="mean_abs"``: :math:`\alpha_c` = mean over output channel :math:`c` of :math:`|W|`, recomputed in every
  forward from the stored weight and *detached* (no gradient flows through it), as Larq's ``magnitude_aware_sign``
  for Bi-Real Net (Liu et al., arXiv:1808.00278; larq/larq ``larq/quantizers.py``, which applies
  ``stop_gradient`` to the per-channel mean). Latent mode only: in Bop mode :math:`|W| = 1` and the factor is 1.
- ``scale="fixed"``: a buffer ``weight_scale`` [out_channels], 1 at construction (:func:`torchbop.binarize` sets it
  to the source weights' per-channel mean :math:`|W|`), never trained; the way to keep XNOR-Net's magnitudes in Bop
  mode.
- ``scale="learnable"``: an ``nn.Parameter`` ``weight_scale`` [out_channels], initialised as ``"fixed"``, trained by
  the ordinary optimizer (``split_binary_params`` puts it in ``other``), as XNOR-Net++ learns its factors.

With a scale, the forward is exactly ``out = conv(x_q, w_q, bias=None) * alpha.view(1, -1, 1, 1)`` (``view(1, -1, 1)``
for ``BinaryConv1d``, ``view(1, -1)`` for ``BinaryLinear``), then ``out + bias.view(...)`` when there is a bias;
:meth:`output_scale` returns ``alpha`` (``None`` without scaling).

This module also has :class:`ShiftBatchNorm1d` and :class:`ShiftBatchNorm2d`, batch norm with a learned shift and no
scale (Keras' ``BatchNormalization(scale=False)``), which the BNNs of the paper use.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from torchbop.quantizers import SteSign, sign

__all__ = ["BinaryConv1d", "BinaryConv2d", "BinaryLinear", "ShiftBatchNorm1d", "ShiftBatchNorm2d", "MODES", "SCALES"]

#: The two ways a binary layer stores its weight.
MODES = ("bop", "latent")

#: The weight scalings a binary layer accepts besides ``None``.
SCALES = ("mean_abs", "fixed", "learnable")


class _Default:
    """Sentinel for "the default quantizer for this mode": a fresh module per layer, never one shared instance."""

    def __repr__(self) -> str:
        return "<default>"


_DEFAULT: Any = _Default()


def _check_mode(mode: str) -> str:
    if mode not in MODES:
        raise ValueError(f"Invalid mode: {mode!r} (expected one of {MODES})")
    return mode


def _check_scale(scale: Any, mode: str) -> str | None:
    if scale is not None and not isinstance(scale, str):
        raise TypeError(f"scale must be a string or None, got {type(scale).__name__}; expected one of {SCALES}")
    if scale is not None and scale not in SCALES:
        raise ValueError(f"Invalid scale: {scale!r} (expected None or one of {SCALES})")
    if scale == "mean_abs" and mode == "bop":
        raise ValueError(
            "Invalid scale: 'mean_abs' in mode='bop': Bop-mode weights are +-1, so their mean |W| is always 1. Use "
            "scale='fixed' (a per-channel factor, set from the real weights by torchbop.binarize) or "
            "scale='learnable' (the same, trained by the ordinary optimizer), or mode='latent'."
        )
    return scale


def _check_quantizer(name: str, quantizer: Any) -> nn.Module | None:
    if quantizer is None or isinstance(quantizer, nn.Module):
        return quantizer
    raise TypeError(
        f"{name} must be an nn.Module or None, got {type(quantizer).__name__}; "
        "wrap functions in a module, e.g. torchbop.quantizers.SteSign()"
    )


class _BinaryLayerMixin:
    """What the binary layers share: quantizers, weight scale, initialisation, the quantized operands, the forward.

    Goes before the torch layer in the bases, so that its ``reset_parameters`` and ``extra_repr`` take precedence.
    """

    is_binary = True
    mode: str
    weight: nn.Parameter
    bias: nn.Parameter | None
    input_quantizer: nn.Module | None
    weight_quantizer: nn.Module | None
    scale: str | None = None
    pad_value: float = 0.0

    def _init_scale(self, scale: Any) -> None:
        self.scale = _check_scale(scale, self.mode)
        if self.scale in ("fixed", "learnable"):
            ones = torch.ones(self.weight.shape[0], device=self.weight.device, dtype=self.weight.dtype)
            if self.scale == "learnable":
                self.weight_scale = nn.Parameter(ones)
            else:
                self.register_buffer("weight_scale", ones)  # type: ignore[attr-defined]

    def output_scale(self) -> Tensor | None:
        r"""The per-output-channel factor :math:`\alpha` [out_channels] that multiplies the output; ``None`` without.

        ``"mean_abs"``: the detached per-channel mean of :math:`|W|` of the stored weight; ``"fixed"`` and
        ``"learnable"``: ``weight_scale`` itself.
        """
        if self.scale is None:
            return None
        if self.scale == "mean_abs":
            w = self.weight.detach()
            return w.abs().mean(dim=tuple(range(1, w.dim())))
        return self.weight_scale

    def _init_pad_value(self, pad_value: float, padding: Any, padding_mode: str) -> None:
        self.pad_value = float(pad_value)
        if self.pad_value != 0.0:
            if padding_mode != "zeros":
                raise ValueError(f"pad_value={pad_value} needs padding_mode='zeros', got padding_mode={padding_mode!r}")
            if not any(self._reversed_padding_repeated_twice):  # type: ignore[attr-defined]
                raise ValueError(f"pad_value={pad_value} has no effect: the layer does not pad (padding={padding!r})")

    def _scaled(self, out: Tensor, alpha: Tensor, bias: Tensor | None, channel_dims: int) -> Tensor:
        """``out * alpha`` then ``+ bias``, both broadcast over the output channel (dim ``-channel_dims``)."""
        shape = (-1,) + (1,) * (channel_dims - 1)
        out = out * alpha.view(shape)
        return out if bias is None else out + bias.view(shape)

    def _conv_output(self, input: Tensor, conv: Any, spatial_dims: int) -> Tensor:
        """The forward of a binary convolution: quantize, convolve (+ padding border term), scale, add the bias."""
        x = self._quantized_input(input)
        weight = self._quantized_weight()
        alpha = self.output_scale()
        out = self._conv_forward(x, weight, self.bias if alpha is None else None)  # type: ignore[attr-defined]
        if self.pad_value != 0.0:
            # By linearity, conv(pad(x, v)) = conv(pad(x, 0)) + conv(pad(0, v)). The border term is one image
            # (unbatched, broadcast over the batch): cheaper than copying the whole batch into a padded tensor.
            pads = self._reversed_padding_repeated_twice  # type: ignore[attr-defined]
            border = F.pad(x.new_zeros(x.shape[-(spatial_dims + 1) :]), pads, value=self.pad_value)
            stride, dilation, groups = self.stride, self.dilation, self.groups  # type: ignore[attr-defined]
            out = out + conv(border, weight, None, stride, 0, dilation, groups)
        if alpha is not None:
            out = self._scaled(out, alpha, self.bias, spatial_dims + 1)
        return out

    def _init_quantizers(self, input_quantizer: Any, weight_quantizer: Any) -> None:
        if input_quantizer is _DEFAULT:
            input_quantizer = SteSign()
        if weight_quantizer is _DEFAULT:
            weight_quantizer = SteSign() if self.mode == "latent" else None
        self.input_quantizer = _check_quantizer("input_quantizer", input_quantizer)
        self.weight_quantizer = _check_quantizer("weight_quantizer", weight_quantizer)

    def reset_parameters(self) -> None:
        """Glorot-uniform weights (Keras' default), binarized with sign in ``"bop"`` mode; zero bias."""
        nn.init.xavier_uniform_(self.weight)
        if self.mode == "bop":
            with torch.no_grad():
                self.weight.copy_(sign(self.weight))
        if self.bias is not None:
            nn.init.zeros_(self.bias)
        if getattr(self, "weight_scale", None) is not None:  # absent while the torch layer's __init__ runs
            with torch.no_grad():
                self.weight_scale.fill_(1.0)

    def _quantized_input(self, x: Tensor) -> Tensor:
        return x if self.input_quantizer is None else self.input_quantizer(x)

    def _quantized_weight(self) -> Tensor:
        return self.weight if self.weight_quantizer is None else self.weight_quantizer(self.weight)

    def extra_repr(self) -> str:
        s = super().extra_repr() + f", mode={self.mode}"  # type: ignore[misc]
        if self.pad_value != 0.0:
            s += f", pad_value={self.pad_value}"
        if self.scale is not None:
            s += f", scale={self.scale}"
        return s


class BinaryConv1d(_BinaryLayerMixin, nn.Conv1d):
    r"""1-D convolution with binary weights and binary inputs: :class:`BinaryConv2d` for sequences.

    Same arguments as ``nn.Conv1d`` (but ``bias=False`` by default), plus ``mode``, ``input_quantizer``,
    ``weight_quantizer``, ``pad_value`` and ``scale`` as in :class:`BinaryConv2d`; input ``[N, C, L]`` or ``[C, L]``.

    Example:
        >>> conv = BinaryConv1d(4, 6, 3, padding=1, pad_value=1.0, scale="fixed")
        >>> conv
        BinaryConv1d(
          4, 6, kernel_size=(3,), stride=(1,), padding=(1,), bias=False, mode=bop, pad_value=1.0, scale=fixed
          (input_quantizer): SteSign(clip_value=1.0)
        )
        >>> conv(torch.randn(2, 4, 10)).shape
        torch.Size([2, 6, 10])
        >>> conv.output_scale()
        tensor([1., 1., 1., 1., 1., 1.])
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int],
        stride: int | tuple[int] = 1,
        padding: str | int | tuple[int] = 0,
        dilation: int | tuple[int] = 1,
        groups: int = 1,
        bias: bool = False,
        padding_mode: str = "zeros",
        device: Any = None,
        dtype: Any = None,
        *,
        mode: str = "bop",
        input_quantizer: nn.Module | None = _DEFAULT,
        weight_quantizer: nn.Module | None = _DEFAULT,
        pad_value: float = 0.0,
        scale: str | None = None,
    ) -> None:
        self.mode = _check_mode(mode)  # read by reset_parameters, which nn.Conv1d.__init__ calls
        super().__init__(
            in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias, padding_mode, device, dtype
        )
        self._init_pad_value(pad_value, padding, padding_mode)
        self._init_quantizers(input_quantizer, weight_quantizer)
        self._init_scale(scale)

    def forward(self, input: Tensor) -> Tensor:
        return self._conv_output(input, F.conv1d, 1)


class BinaryConv2d(_BinaryLayerMixin, nn.Conv2d):
    r"""2-D convolution with binary weights and binary inputs.

    Same arguments as ``nn.Conv2d`` (but ``bias=False`` by default), plus:

    Args:
        mode: ``"bop"`` (``weight`` holds exactly +-1 and is used as is) or ``"latent"`` (``weight`` is real and
            binarized by ``weight_quantizer`` in forward).
        input_quantizer: applied to the input before padding; default a fresh ``SteSign()``; ``None`` for real input.
        weight_quantizer: applied to ``weight``; default ``None`` in ``"bop"`` mode and ``SteSign()`` in ``"latent"``
            mode. Pass ``None`` in latent mode to run with the real latent weights.
        pad_value: the value the (quantized) input is padded with. ``0.0`` (default) is ``nn.Conv2d``'s zero padding,
            which makes border activations ternary; ``-1.0`` or ``1.0`` keep them binary (Larq's ``pad_values``).
            A nonzero value needs ``padding_mode="zeros"`` and a layer that pads; it works with ``padding="same"``.
        scale: ``None`` (default), ``"mean_abs"`` (latent mode only), ``"fixed"`` or ``"learnable"``: a factor per
            output channel on the output (XNOR-Net, arXiv:1603.05279; see the module docstring and
            :meth:`output_scale`).

    Weights start as Glorot-uniform draws (``nn.init.xavier_uniform_``), binarized with
    :func:`~torchbop.quantizers.sign` in ``"bop"`` mode; a bias starts at zero.

    Example:
        >>> conv = BinaryConv2d(3, 8, 3, padding=1)
        >>> conv
        BinaryConv2d(
          3, 8, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1), bias=False, mode=bop
          (input_quantizer): SteSign(clip_value=1.0)
        )
        >>> conv.weight.detach().abs().unique()
        tensor([1.])
        >>> conv(torch.randn(2, 3, 16, 16)).shape
        torch.Size([2, 8, 16, 16])
        >>> BinaryConv2d(8, 8, 3, padding="same", pad_value=-1.0, input_quantizer=None, mode="latent")
        BinaryConv2d(
          8, 8, kernel_size=(3, 3), stride=(1, 1), padding=same, bias=False, mode=latent, pad_value=-1.0
          (weight_quantizer): SteSign(clip_value=1.0)
        )
        >>> xnor = BinaryConv2d(3, 2, 1, mode="latent", scale="mean_abs")
        >>> _ = xnor.weight.data.copy_(torch.tensor([[0.5, -1.0, 1.5], [0.1, 0.2, -0.3]]).view(2, 3, 1, 1))
        >>> xnor.output_scale()  # per output channel: mean |W|
        tensor([1.0000, 0.2000])
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: str | int | tuple[int, int] = 0,
        dilation: int | tuple[int, int] = 1,
        groups: int = 1,
        bias: bool = False,
        padding_mode: str = "zeros",
        device: Any = None,
        dtype: Any = None,
        *,
        mode: str = "bop",
        input_quantizer: nn.Module | None = _DEFAULT,
        weight_quantizer: nn.Module | None = _DEFAULT,
        pad_value: float = 0.0,
        scale: str | None = None,
    ) -> None:
        # Set before nn.Conv2d.__init__, which calls reset_parameters, which reads the mode.
        self.mode = _check_mode(mode)
        super().__init__(
            in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias, padding_mode, device, dtype
        )
        self._init_pad_value(pad_value, padding, padding_mode)
        self._init_quantizers(input_quantizer, weight_quantizer)
        self._init_scale(scale)

    def forward(self, input: Tensor) -> Tensor:
        return self._conv_output(input, F.conv2d, 2)


class BinaryLinear(_BinaryLayerMixin, nn.Linear):
    r"""Fully connected layer with binary weights and binary inputs.

    Same arguments as ``nn.Linear`` (but ``bias=False`` by default), plus ``mode``, ``input_quantizer``,
    ``weight_quantizer`` and ``scale`` (one factor per output feature) as in :class:`BinaryConv2d`.

    Example:
        >>> fc = BinaryLinear(16, 4)
        >>> fc
        BinaryLinear(
          in_features=16, out_features=4, bias=False, mode=bop
          (input_quantizer): SteSign(clip_value=1.0)
        )
        >>> y = fc(torch.randn(2, 16))
        >>> bool((y.remainder(2) == 0).all())  # a sum of 16 products of +-1 is even
        True
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = False,
        device: Any = None,
        dtype: Any = None,
        *,
        mode: str = "bop",
        input_quantizer: nn.Module | None = _DEFAULT,
        weight_quantizer: nn.Module | None = _DEFAULT,
        scale: str | None = None,
    ) -> None:
        self.mode = _check_mode(mode)  # read by reset_parameters, which nn.Linear.__init__ calls
        super().__init__(in_features, out_features, bias, device, dtype)
        self._init_quantizers(input_quantizer, weight_quantizer)
        self._init_scale(scale)

    def forward(self, input: Tensor) -> Tensor:
        alpha = self.output_scale()
        if alpha is None:
            return F.linear(self._quantized_input(input), self._quantized_weight(), self.bias)
        out = F.linear(self._quantized_input(input), self._quantized_weight(), None)
        return self._scaled(out, alpha, self.bias, 1)


# ----------------------------------------------------------------------------------------------------------------------
# Batch norm without scale


class _ShiftBatchNormMixin:
    """Batch norm with a learned shift (beta) and no scale (gamma): ``affine=False`` plus a ``bias`` parameter.

    ``_BatchNorm.forward`` passes ``self.weight`` (None) and ``self.bias`` to ``F.batch_norm``, which accepts them
    independently, so the computation is ``(x - mean) / sqrt(var + eps) + beta`` with no other change.
    """

    bias: nn.Parameter

    def __init__(
        self, num_features: int, eps: float = 1e-3, momentum: float = 0.01, device: Any = None, dtype: Any = None
    ) -> None:
        super().__init__(  # type: ignore[call-arg]
            num_features, eps, momentum, affine=False, device=device, dtype=dtype
        )
        self.bias = nn.Parameter(torch.zeros(num_features, device=device, dtype=dtype))

    def reset_parameters(self) -> None:
        super().reset_parameters()  # type: ignore[misc]
        if getattr(self, "bias", None) is not None:  # absent while _BatchNorm.__init__ runs
            nn.init.zeros_(self.bias)

    def extra_repr(self) -> str:
        return "{num_features}, eps={eps}, momentum={momentum}, scale=False".format(**self.__dict__)


class ShiftBatchNorm1d(_ShiftBatchNormMixin, nn.BatchNorm1d):
    r"""``nn.BatchNorm1d`` with a learned shift :math:`\beta` and no scale: :math:`y = \hat{x} + \beta`.

    Keras' ``BatchNormalization(scale=False)``, with Keras' defaults ``eps=1e-3`` and ``momentum=0.01`` (Keras'
    ``momentum=0.99``; torch's momentum weighs the new batch, Keras' the running value). Before a sign activation a
    positive scale would change nothing.

    Example:
        >>> bn = ShiftBatchNorm1d(4)
        >>> bn
        ShiftBatchNorm1d(4, eps=0.001, momentum=0.01, scale=False)
        >>> [name for name, _ in bn.named_parameters()]
        ['bias']
    """


class ShiftBatchNorm2d(_ShiftBatchNormMixin, nn.BatchNorm2d):
    r"""``nn.BatchNorm2d`` with a learned shift :math:`\beta` and no scale; see :class:`ShiftBatchNorm1d`.

    Example:
        >>> bn = ShiftBatchNorm2d(8)
        >>> bn.weight is None, bn.bias.shape
        (True, torch.Size([8]))
    """
