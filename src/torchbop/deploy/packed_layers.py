r"""Inference layers of a packed BNN: binary convolutions and dense layers computed exactly in integer arithmetic.

A binary layer of the trained model computes, in float32, :math:`y = W \star \operatorname{sign}(x)` with
:math:`W \in \{-1, +1\}` (sign(0) = +1, as :func:`torchbop.quantizers.sign`) and zero padding, so every output is
an integer sum of -1, 0 and +1 terms: exact in float32 as long as it stays below :math:`2^{24}` in magnitude (a
layer would need 16 million inputs per output to get there). Here the same integers come from packed bits:

- inputs and weights become bits (1 = -1, 0 = +1: ``x < 0`` is one comparison, and it sends 0, -0.0 and NaN to +1
  as ``sign`` does), 8 channels to a byte, pixels NHWC;
- the packed engine's XNOR-popcount convolution (:func:`~torchbop.deploy.engine_kernels.binary_conv`; a dense
  layer: :func:`~torchbop.deploy.xnor_kernel.binary_dot`) counts the disagreements ``d`` of each receptive field with
  each filter, and the dot product over the ``K`` real positions is ``K - 2 d``;
- zero ("same") padding: the padded positions are 0 in the model, but a zero byte reads as +1 here. The padded
  positions of an output position depend only on where it is, so ``(pad_value - 1) * sum of W over them`` is one
  ``[H_out, W_out, C_out]`` map per input size (a convolution of the padding indicator with ``W``, computed once
  and cached), added to every image of the batch. The same term handles Larq-style ``pad_value=+-1``.

The layer's result is the integer tensor in float32, in the memory format of its input (as ``F.conv2d`` makes it),
so the batch norms and poolings that follow run on the very same numbers as in the model. A grouped convolution
(``groups > 1``) is one such product per group. A layer with a weight scale (``output_scale()``, XNOR-Net's
:math:`\alpha`, arXiv:1603.05279) then computes ``out * alpha`` and ``+ bias`` per output channel, the model's own
float operations on the same integers. A layer whose input is real (the first
convolution, ``binary_input=False``) is computed as the model computes it: ``F.conv2d`` of the real input with the
+-1 weights in float32.

Every layer has two backends, equal bit for bit: ``"kernel"`` (the packed-bit path above, C kernel) and
``"torch"`` (``F.conv2d`` / ``F.linear`` of ``sign(x)`` with the +-1 weights in float32, exact for the reason
above).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from torchbop.deploy import engine_kernels
from torchbop.deploy.bit_layout import pack_bytes, pack_rows
from torchbop.deploy.xnor_kernel import binary_dot, resolve_backend
from torchbop.quantizers import sign

__all__ = ["PackedBinaryConv2d", "PackedBinaryLinear", "PackedBatchNorm", "memory_format_of_input"]


def memory_format_of_input(x: Tensor) -> torch.memory_format:
    """The memory format a convolution gives its output for input ``x``: channels_last when ``x``'s channels are
    its innermost dimension (``x.stride(1) == 1``, with more than one pixel), else torch's default."""
    if x.dim() == 4 and x.stride(1) == 1 and x.shape[2] * x.shape[3] > 1:
        return torch.channels_last
    return torch.contiguous_format


def _weight_words(negative: Tensor) -> Tensor:
    """Bool ``[O, ...]`` (``[O, kh, kw, C]`` or ``[O, K]``) to the kernel's int64 rows ``[O, words]``: the last
    dimension padded to whole bytes, each row to whole words, with zero bits."""
    c = negative.shape[-1]
    if c % 8:
        negative = F.pad(negative, (0, -c % 8))
    rows = pack_bytes(negative.reshape(negative.shape[0], -1))  # bytes never straddle two pixels: C padded to 8
    if rows.shape[1] % 8:
        rows = F.pad(rows, (0, -rows.shape[1] % 8))
    return rows.contiguous().view(torch.int64)


class _PackedBinaryLayer(nn.Module):
    """What both packed layers share: the backend, the +-1 weight, its packed rows and the optional bias."""

    def __init__(
        self, weight: Tensor, bias: Tensor | None, binary_input: bool, backend: str, scale: Tensor | None = None
    ) -> None:
        super().__init__()
        self.training = False
        self.binary_input = binary_input
        self.backend = resolve_backend(backend) if binary_input else "torch"
        # The float +-1 weight is what F.conv2d / F.linear need (torch backend, real input); the kernel needs rows.
        if self.backend == "torch":
            self.register_buffer("weight", weight.float())
        else:
            self.register_buffer("weight_words", self._words(weight < 0))
        self.register_buffer("bias", None if bias is None else bias.detach().clone())
        self.register_buffer("scale", None if scale is None else scale.detach().clone())
        self.fan_in = weight[0].numel()

    def _finish(self, out: Tensor, channel_shape: tuple[int, ...]) -> Tensor:
        """The model's float operations after the integer product: ``* scale`` and ``+ bias`` (when there is a
        scale), else ``+ bias`` (the torch backend folds that bias into its ``F.conv2d`` / ``F.linear`` call)."""
        if self.scale is not None:
            out = out * self.scale.view(channel_shape)
        return out if self.bias is None else out + self.bias.view(channel_shape)

    def _words(self, negative: Tensor) -> Tensor:
        raise NotImplementedError

    def train(self, mode: bool = True) -> _PackedBinaryLayer:
        if mode:
            raise RuntimeError(f"{type(self).__name__} is for inference only (eval mode)")
        return super().train(False)


class PackedBinaryConv2d(_PackedBinaryLayer):
    """``BinaryConv2d`` for inference: see the module docstring.

    Args:
        weight: the +-1 weight ``[O, C, kh, kw]`` (float).
        bias: ``[O]`` or None.
        stride, padding, dilation: as the model's layer (``padding`` an int pair or ``"same"``/``"valid"``).
        pad: the layer's padding as ``[left, right, top, bottom]`` (``nn.Conv2d._reversed_padding_repeated_twice``).
        pad_value: what the binarized input is padded with (0, the default, or +-1).
        groups: as ``nn.Conv2d`` (``weight`` is ``[O, C / groups, kh, kw]``).
        scale: the per-output-channel factor ``[O]`` of ``output_scale()``, or None.
        binary_input: False for a first layer that takes real input.
        backend: ``"kernel"``, ``"torch"`` or ``"auto"``.
    """

    def __init__(
        self,
        weight: Tensor,
        bias: Tensor | None,
        *,
        stride: tuple[int, int],
        padding: tuple[int, int] | str,
        dilation: tuple[int, int],
        pad: tuple[int, int, int, int],
        pad_value: float = 0.0,
        groups: int = 1,
        scale: Tensor | None = None,
        binary_input: bool = True,
        backend: str = "auto",
    ) -> None:
        self.kernel_size = tuple(weight.shape[2:])
        self.groups = int(groups)
        self.in_channels, self.out_channels = weight.shape[1] * self.groups, weight.shape[0]
        super().__init__(weight, bias, binary_input, backend, scale)
        self.stride, self.padding, self.dilation = tuple(stride), padding, tuple(dilation)
        self.pad, self.pad_value = tuple(pad), float(pad_value)
        # the kernel backend computes the border term of each new input size from the +-1 weight (int8: 1 byte each)
        self.register_buffer("weight_sum_source", weight.to(torch.int8) if self.backend == "kernel" else None)
        self._border: dict[tuple[int, int], Tensor] = {}

    def _words(self, negative: Tensor) -> Tensor:
        return _weight_words(negative.permute(0, 2, 3, 1))  # [O, kh, kw, C / groups]: the im2col row order

    def extra_repr(self) -> str:
        groups = f", groups={self.groups}" if self.groups != 1 else ""
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"padding={self.padding}{groups}, binary_input={self.binary_input}, backend={self.backend}"
        )

    def forward(self, x: Tensor) -> Tensor:
        if self.backend == "torch":
            return self._forward_float(x if not self.binary_input else sign(x))
        return self._forward_packed(x)

    def _forward_float(self, x: Tensor) -> Tensor:
        """The model's own calls, in its order (``BinaryConv2d.forward``)."""
        bias = self.bias if self.scale is None else None
        out = F.conv2d(x, self.weight, bias, self.stride, self.padding, self.dilation, self.groups)
        if self.pad_value != 0.0:  # as BinaryConv2d: conv(pad(x, v)) = conv(pad(x, 0)) + conv(pad(0, v))
            border = F.pad(x.new_zeros(x.shape[-3:]), self.pad, value=self.pad_value)
            out = out + F.conv2d(border, self.weight, None, self.stride, 0, self.dilation, self.groups)
        return out if self.scale is None else self._finish(out, (1, -1, 1, 1))

    def _out_size(self, h: int, w: int) -> tuple[int, int]:
        (kh, kw), (sh, sw), (dh, dw) = self.kernel_size, self.stride, self.dilation
        left, right, top, bottom = self.pad
        return (h + top + bottom - dh * (kh - 1) - 1) // sh + 1, (w + left + right - dw * (kw - 1) - 1) // sw + 1

    def _base(self, h: int, w: int) -> Tensor:
        """``K + (pad_value - 1) * (sum of W over the padded positions)`` per output position: int32 ``[Ho Wo, O]``.

        The kernel reads a padded position as +1; the model pads with ``pad_value``.
        """
        key = (h, w)
        if key not in self._border:
            indicator = F.pad(torch.zeros(1, self.in_channels, h, w), self.pad, value=1.0)
            padded_sum = F.conv2d(
                indicator, self.weight_sum_source.float(), None, self.stride, 0, self.dilation, self.groups
            )[0]
            base = (self.pad_value - 1.0) * padded_sum + self.fan_in  # exact: small integers
            base = base.round().to(torch.int32)
            self._border[key] = base.permute(1, 2, 0).reshape(-1, self.out_channels).contiguous()
        return self._border[key]

    def _forward_packed(self, x: Tensor) -> Tensor:
        n, _, h, w = x.shape
        ho, wo = self._out_size(h, w)
        base = self._base(h, w)
        path, threads = engine_kernels.resolve_engine("kernel"), max(1, torch.get_num_threads())
        geometry = dict(kernel_size=self.kernel_size, stride=self.stride, dilation=self.dilation, pad=self.pad)
        parts = []
        per_in, per_out = self.in_channels // self.groups, self.out_channels // self.groups
        for g in range(self.groups):  # one product per group: its input channels against its filters
            part = x if self.groups == 1 else x[:, g * per_in : (g + 1) * per_in]
            pixels = engine_kernels.pack_signs_nhwc(part.float(), path)  # the padding reads as +1: see _base
            filters = slice(g * per_out, (g + 1) * per_out)
            rows, border = self.weight_words[filters], base[:, filters].contiguous()
            parts.append(engine_kernels.binary_conv(pixels, rows, border, path=path, threads=threads, **geometry))
        out = parts[0] if self.groups == 1 else torch.cat(parts, dim=1)  # [N Ho Wo, O]
        out = out.view(n, ho, wo, self.out_channels).permute(0, 3, 1, 2)  # NCHW shape, channels_last memory
        out = self._finish(out, (1, -1, 1, 1))
        return out.contiguous(memory_format=memory_format_of_input(x))


class PackedBinaryLinear(_PackedBinaryLayer):
    """``BinaryLinear`` for inference: ``weight`` +-1 ``[O, K]``, optional ``bias``; see the module docstring."""

    def __init__(
        self,
        weight: Tensor,
        bias: Tensor | None,
        *,
        scale: Tensor | None = None,
        binary_input: bool = True,
        backend: str = "auto",
    ) -> None:
        self.in_features, self.out_features = weight.shape[1], weight.shape[0]
        super().__init__(weight, bias, binary_input, backend, scale)
        self.register_buffer("base", torch.full((1, self.out_features), float(self.in_features)))

    def _words(self, negative: Tensor) -> Tensor:
        return _weight_words(negative)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"binary_input={self.binary_input}, backend={self.backend}"
        )

    def forward(self, x: Tensor) -> Tensor:
        if self.backend == "torch":
            x = x if not self.binary_input else sign(x)
            if self.scale is None:
                return F.linear(x, self.weight, self.bias)
            return self._finish(F.linear(x, self.weight, None), (1, -1))
        out = binary_dot(pack_rows(x < 0), self.weight_words, self.base, "kernel")
        return self._finish(out, (1, -1))


class PackedBatchNorm(nn.Module):
    """Batch norm in eval mode, kept exactly: ``F.batch_norm`` with the model's running statistics, ``eps`` and
    optional affine ``weight`` / ``bias``, the very call ``nn.BatchNorm{1,2}d.eval()`` makes."""

    def __init__(
        self, running_mean: Tensor, running_var: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float
    ) -> None:
        super().__init__()
        self.num_features, self.eps = running_mean.numel(), float(eps)
        for name, value in (
            ("running_mean", running_mean),
            ("running_var", running_var),
            ("weight", weight),
            ("bias", bias),
        ):
            self.register_buffer(name, None if value is None else value.detach().clone())

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}, affine={self.weight is not None}"

    def forward(self, x: Tensor) -> Tensor:
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)
