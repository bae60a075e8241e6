r"""ReActNet's generalized activations: :class:`RSign` (sign with a learned threshold per channel) and :class:`RPReLU`
(PReLU with a learned shift before and after it), from Liu et al., "ReActNet: Towards Precise Binary Neural Network
with Generalized Activation Functions", ECCV 2020 (arXiv:2003.03488), eqs. 3 and 4:

.. math::
    \operatorname{RSign}(x_c) = q(x_c - \alpha_c), \qquad
    \operatorname{RPReLU}(x_c) = \begin{cases} x_c - \gamma_c + \zeta_c & x_c > \gamma_c \\
                                               \beta_c (x_c - \gamma_c) + \zeta_c & x_c \le \gamma_c \end{cases}

with :math:`q` a sign quantizer (forward :math:`\operatorname{sign}`, sign(0) = +1) and per-channel parameters: the
threshold :math:`\alpha_c` (``RSign.threshold``), the input shift :math:`\gamma_c` (``RPReLU.shift_in``), the negative
slope :math:`\beta_c` (``RPReLU.slope``) and the output shift :math:`\zeta_c` (``RPReLU.shift_out``). Channels are
dimension 1, as in torch: ``[N, C, H, W]`` or ``[N, C]``.

Compared with the authors' code (liuzechun/ReActNet, ``mobilenet/2_step2/reactnet.py`` and
``resnet/2_step2/birealnet.py``, read through the search tool): their ``LearnableBias`` *adds* a zero-initialised
per-channel bias, so ``move(x) = x + b``; here the threshold is *subtracted* (the paper's eq. 3 and contract B),
which is the same function with :math:`\alpha = -b`, also zero-initialised. Their ``BinaryActivation`` is
``torch.sign`` forward (0 at 0; here +1) with the gradient of the piecewise polynomial
:math:`-1, x^2 + 2x, -x^2 + 2x, 1` on :math:`(-\infty, -1), [-1, 0), [0, 1), [1, \infty)`, that is
:math:`\max(0, 2 - 2|x|)`: exactly :class:`~torchbop.quantizers.ApproxSign`, the default quantizer of
:class:`RSign`. Their RPReLU is ``LearnableBias`` -> ``nn.PReLU(C)`` (slope initialised to 0.25) ->
``LearnableBias``: :class:`RPReLU` with ``shift_in = -b1`` and ``shift_out = b2``.

Example:
    >>> import torch
    >>> x = torch.tensor([[-0.5, 0.5]])
    >>> RSign(2)(x)
    tensor([[-1.,  1.]], grad_fn=<ApproxSignFunctionBackward>)
    >>> RPReLU(2)(x)
    tensor([[-0.1250,  0.5000]], grad_fn=<AddBackward0>)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from torchbop.quantizers import ApproxSign

__all__ = ["RSign", "RPReLU"]


def _check_channels(num_channels: object) -> int:
    if isinstance(num_channels, bool) or not isinstance(num_channels, int) or num_channels < 1:
        raise ValueError(f"Invalid num_channels: {num_channels!r} (must be an int >= 1, the size of dimension 1)")
    return num_channels


def _per_channel(param: Tensor, x: Tensor) -> Tensor:
    """``param`` [C] shaped to broadcast over ``x`` [N, C, ...] (``view(1, -1, 1, 1)`` for images, ``view(1, -1)``
    for [N, C]). The rank is static for a given layer, so ``torch.fx`` traces it as a constant."""
    return param.view((1, -1) + (1,) * (x.dim() - 2))


class RSign(nn.Module):
    r"""ReActNet's RSign: ``quantizer(x - threshold)`` with a learned threshold per channel (arXiv:2003.03488, eq. 3).

    Args:
        num_channels: :math:`C`, the size of dimension 1 of the input.
        quantizer: the sign quantizer (an ``nn.Module``); default a fresh
            :class:`~torchbop.quantizers.ApproxSign` (the authors' piecewise-polynomial straight-through estimator).

    The output is in {-1, +1}. ``threshold`` (shape [C], initialised to 0) is a float parameter, trained by the
    ordinary optimizer. Use it as a binary layer's ``input_quantizer`` (then the summary counts that layer's MACs as
    binary) or on its own.

    Example:
        >>> rsign = RSign(3)
        >>> rsign
        RSign(
          3
          (quantizer): ApproxSign()
        )
        >>> with torch.no_grad():
        ...     _ = rsign.threshold.copy_(torch.tensor([0.0, 1.0, -1.0]))
        >>> rsign(torch.full((1, 3, 1, 1), 0.5)).flatten().tolist()
        [1.0, -1.0, 1.0]
    """

    def __init__(self, num_channels: int, quantizer: nn.Module | None = None) -> None:
        super().__init__()
        self.num_channels = _check_channels(num_channels)
        if quantizer is None:
            quantizer = ApproxSign()
        if not isinstance(quantizer, nn.Module):
            raise TypeError(
                f"quantizer must be an nn.Module or None, got {type(quantizer).__name__}; "
                "wrap functions in a module, e.g. torchbop.quantizers.ApproxSign()"
            )
        self.quantizer = quantizer
        self.threshold = nn.Parameter(torch.zeros(num_channels))

    def forward(self, x: Tensor) -> Tensor:
        return self.quantizer(x - _per_channel(self.threshold, x))

    def extra_repr(self) -> str:
        return f"{self.num_channels}"


class RPReLU(nn.Module):
    r"""ReActNet's RPReLU: ``prelu(x - shift_in, slope) + shift_out`` per channel (arXiv:2003.03488, eq. 4).

    Args:
        num_channels: :math:`C`, the size of dimension 1 of the input.
        init_slope: initial negative slope :math:`\beta` of every channel (``nn.PReLU``'s default 0.25, as the
            authors' code).

    Parameters (each [C], float): ``shift_in`` (:math:`\gamma`, init 0), ``slope`` (:math:`\beta`, init
    ``init_slope``), ``shift_out`` (:math:`\zeta`, init 0).

    Example:
        >>> act = RPReLU(2, init_slope=0.5)
        >>> act
        RPReLU(2, init_slope=0.5)
        >>> act(torch.tensor([[-2.0, 3.0]])).tolist()
        [[-1.0, 3.0]]
    """

    def __init__(self, num_channels: int, init_slope: float = 0.25) -> None:
        super().__init__()
        self.num_channels = _check_channels(num_channels)
        if isinstance(init_slope, bool) or not isinstance(init_slope, (int, float)):
            raise TypeError(f"init_slope must be a float, got {type(init_slope).__name__}")
        self.init_slope = float(init_slope)
        self.shift_in = nn.Parameter(torch.zeros(num_channels))
        self.slope = nn.Parameter(torch.full((num_channels,), self.init_slope))
        self.shift_out = nn.Parameter(torch.zeros(num_channels))

    def forward(self, x: Tensor) -> Tensor:
        return F.prelu(x - _per_channel(self.shift_in, x), self.slope) + _per_channel(self.shift_out, x)

    def extra_repr(self) -> str:
        return f"{self.num_channels}, init_slope={self.init_slope}"
