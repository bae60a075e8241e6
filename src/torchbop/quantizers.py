r"""Quantizers: functions that map real values to {-1, +1}, with the surrogate gradients BNNs train through.

A quantizer has a forward pass (the binarization) and a backward pass (a *pseudo-gradient*: the true derivative of a
step function is zero almost everywhere, which would stop all learning). Every quantizer here exists in two forms:

- a function, ``ste_sign(x, clip_value=1.0)``, for use inside your own ``forward``;
- an ``nn.Module``, ``SteSign(clip_value=1.0)``, to pass to a layer (``BinaryConv2d(..., input_quantizer=SteSign())``)
  or to put in an ``nn.Sequential``. Modules are the preferred form in models: they show up in ``print(model)``.

===================  ==============================  ============================================================
quantizer            forward                         backward :math:`\partial q / \partial x`
===================  ==============================  ============================================================
``sign``             :math:`\operatorname{sign}(x)`  0
``ste_sign``         :math:`\operatorname{sign}(x)`  :math:`1_{|x| \le c}` (straight-through estimator, eq. 4)
``stochastic_sign``  +1 w.p. :math:`\sigma_h(x)`     :math:`1_{|x| \le 1}`
``approx_sign``      :math:`\operatorname{sign}(x)`  :math:`\max(0, 2 - 2|x|)` (Bi-Real Net)
``swish_sign``       :math:`\operatorname{sign}(x)`  derivative of SignSwish (BNN+), peak :math:`\beta` at 0
===================  ==============================  ============================================================

with :math:`\sigma_h(x) = \operatorname{clip}((x + 1) / 2, 0, 1)` the hard sigmoid.

.. note::
    Throughout, :math:`\operatorname{sign}(0) = +1` (eq. 1 of the reproducibility report), unlike ``torch.sign``
    which returns 0. Also :math:`\operatorname{sign}(-0.0) = +1`, since :math:`-0.0 \ge 0`.

.. note::
    **NaN inputs.** The forward pass gives +1 at a NaN, like at a zero (``torch.sign(nan)`` is 0, and so is
    ``tf.sign(nan)``, so Larq's ``sign`` gives +1 too), except ``stochastic_sign``, which gives -1 (+1 has
    probability "NaN", which no draw is below). Every surrogate gradient is **0** at a NaN input, whatever the
    upstream gradient: :math:`|x| \le c` is false there, as in Larq, whose ``ste_sign`` and ``approx_sign`` give 0
    too (Larq's ``swish_sign`` gives NaN; torchbop gives 0, the limit of the SignSwish derivative, which it also
    gives at :math:`x = \pm\infty`). A NaN activation thus sends no NaN back through its quantizer.

Outputs have the input's dtype (fp32, fp16, bf16, fp64); surrogate gradients of fp16/bf16 inputs are computed in fp32
and then cast, so that they do not overflow. All quantizers work under ``torch.compile`` without graph breaks, except
``stochastic_sign`` with an explicit ``generator``, which dynamo runs eagerly (same results).

References:
    - Courbariaux et al., "Binarized Neural Networks", arXiv:1602.02830 (sign, stochastic sign, STE).
    - Liu et al., "Bi-Real Net", arXiv:1808.00278 (``approx_sign``).
    - Darabi et al., "BNN+: Improved Binary Network Training", arXiv:1812.11800 (``swish_sign``).
    - Helwegen et al., "Latent Weights Do Not Exist", arXiv:1906.02107.

Example:
    >>> import torch
    >>> from torchbop.quantizers import ste_sign, SteSign
    >>> x = torch.tensor([-1.5, -0.5, 0.0, 0.5, 1.5], requires_grad=True)
    >>> y = ste_sign(x)
    >>> y
    tensor([-1., -1.,  1.,  1.,  1.], grad_fn=<SteSignFunctionBackward>)
    >>> y.sum().backward()
    >>> x.grad
    tensor([0., 1., 1., 1., 0.])
    >>> SteSign(clip_value=2.0)
    SteSign(clip_value=2.0)
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

try:
    from torch.compiler import is_compiling as _is_compiling
except ImportError:  # torch < 2.3
    from torch._dynamo import is_compiling as _is_compiling

__all__ = [
    "sign",
    "ste_sign",
    "stochastic_sign",
    "approx_sign",
    "swish_sign",
    "Sign",
    "SteSign",
    "StochasticSign",
    "ApproxSign",
    "SwishSign",
]


# ----------------------------------------------------------------------------------------------------------------------
# Helpers


def _validate_positive(name: str, value: float) -> float:
    """Return ``float(value)``; ``ValueError`` unless it is > 0 (``inf`` is allowed, ``nan`` is not)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    if not value > 0:
        raise ValueError(f"Invalid {name}: {value} (must be > 0)")
    return float(value)


def _binarize(x: Tensor) -> Tensor:
    """sign(x) with sign(0) = +1, in x's dtype; differentiable with a zero derivative.

    ``torch.sign`` maps {<0, 0, >0} to {-1, 0, +1}; adding 1/2 and taking the sign again sends 0 to +1 and keeps the
    others. On CPU these three passes (two in place) are several times faster than ``torch.where(x >= 0, 1., -1.)``.
    """
    return torch.sign(x).add_(0.5).sign_()


def _next_up(value: float, dtype: torch.dtype) -> float:
    """The smallest number representable in ``dtype`` that is strictly greater than ``value`` (> 0, finite).

    For every ``x`` of that dtype, ``x <= value`` holds exactly when ``x < _next_up(value, dtype)``; and the result
    is exact in the dtype, so the comparison gives the same answer whether a kernel makes it in ``dtype`` or in fp32.
    Pure arithmetic on Python floats (no cache to mutate), so that ``torch.compile`` traces it without a graph break.
    """
    info = torch.finfo(dtype)
    _, exponent = math.frexp(max(value, info.smallest_normal))  # value = m * 2**exponent with 0.5 <= m < 1
    ulp = math.ldexp(info.eps, exponent - 1)  # spacing of the dtype's numbers in [2**(exponent-1), 2**exponent)
    up = (math.floor(value / ulp) + 1) * ulp
    return up if up <= info.max else math.inf


def _zero_where_nan(values: Tensor, probe: Tensor) -> Tensor:
    """``values`` with 0 wherever ``probe`` (of the same shape) is NaN; ``values`` itself when ``probe`` has no NaN.

    On CPU, eagerly, one summing pass over ``probe`` (no allocation) proves the common case, a probe without NaN,
    and only a non-finite sum pays for the masking; on other devices and under ``torch.compile`` the masking always
    runs, which avoids a host sync (and fuses into the surrounding kernel when compiled).
    """
    if probe.device.type == "cpu" and not _is_compiling():
        total = probe.sum(dtype=torch.float32) if probe.dtype in (torch.float16, torch.bfloat16) else probe.sum()
        if bool(torch.isfinite(total)):
            return values
    return values.masked_fill(torch.isnan(probe), 0)


def _clipped_identity_grad(grad: Tensor, x: Tensor, clip_value: float) -> Tensor:
    r"""``grad * 1{|x| <= clip_value}``, 0 where x is NaN (as :math:`|x| \le c` is false there).

    ``hardtanh_backward(g, x, lo, hi)`` keeps ``g`` where ``lo < x < hi``; with ``hi`` the next representable number
    above ``clip_value`` (and ``lo = -hi``) that is exactly :math:`|x| \le c`, boundary included. At a NaN ``x`` its
    result depends on the code path (on CPU the vectorized loop gives 0, the scalar loop that handles a tensor's
    tail gives ``g``), so NaN entries are zeroed afterwards, at the cost of one read of ``x`` on CPU.
    """
    if math.isinf(clip_value):
        return _zero_where_nan(grad, x)
    bound = _next_up(clip_value, x.dtype)
    return _zero_where_nan(torch.ops.aten.hardtanh_backward(grad, x, -bound, bound), x)


def _opmath(x: Tensor) -> Tensor:
    """Upcast fp16/bf16 to fp32 for surrogate-gradient arithmetic (cosh and products overflow in fp16)."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


# ----------------------------------------------------------------------------------------------------------------------
# autograd Functions


class SteSignFunction(torch.autograd.Function):
    """The autograd Function behind :func:`ste_sign` (saves x; backward is one fused masking kernel)."""

    @staticmethod
    def forward(ctx, x: Tensor, clip_value: float) -> Tensor:
        ctx.clip_value = clip_value
        if ctx.needs_input_grad[0]:
            ctx.save_for_backward(x)
        return _binarize(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, None]:
        (x,) = ctx.saved_tensors
        return _clipped_identity_grad(grad, x, ctx.clip_value), None


class StochasticSignFunction(torch.autograd.Function):
    """The autograd Function behind :func:`stochastic_sign`."""

    @staticmethod
    def forward(ctx, x: Tensor, generator: torch.Generator | None) -> Tensor:
        if ctx.needs_input_grad[0]:
            ctx.save_for_backward(x)
        xo = _opmath(x)
        prob = xo.add(1.0).mul_(0.5).clamp_(0.0, 1.0)  # hard_sigmoid(x), P(q = +1)
        u = torch.rand(x.shape, generator=generator, dtype=xo.dtype, device=x.device)  # u ~ U[0, 1)
        return torch.where(u < prob, 1.0, -1.0).to(x.dtype)  # p = 1 gives +1 surely, p = 0 gives -1 surely

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, None]:
        (x,) = ctx.saved_tensors
        return _clipped_identity_grad(grad, x, 1.0), None


class ApproxSignFunction(torch.autograd.Function):
    """The autograd Function behind :func:`approx_sign`."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        if ctx.needs_input_grad[0]:
            ctx.save_for_backward(x)
        return _binarize(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        (x,) = ctx.saved_tensors
        surrogate = _opmath(x).abs().mul_(-2.0).add_(2.0).clamp_(min=0.0)  # max(0, 2 - 2|x|); NaN at a NaN x
        return _zero_where_nan(grad * surrogate.to(grad.dtype), x)


class SwishSignFunction(torch.autograd.Function):
    """The autograd Function behind :func:`swish_sign`."""

    @staticmethod
    def forward(ctx, x: Tensor, beta: float) -> Tensor:
        ctx.beta = beta
        if ctx.needs_input_grad[0]:
            ctx.save_for_backward(x)
        return _binarize(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        (x,) = ctx.saved_tensors
        beta = ctx.beta
        bx = _opmath(x) * beta
        surrogate = beta * (2.0 - bx * torch.tanh(bx * 0.5)) / (1.0 + torch.cosh(bx))
        # the surrogate is NaN where x is NaN, and at x = +-inf (-inf / inf), where its limit is 0
        return _zero_where_nan(grad * surrogate.to(grad.dtype), surrogate), None


# ----------------------------------------------------------------------------------------------------------------------
# Functions


def sign(x: Tensor) -> Tensor:
    r"""Deterministic binarization with :math:`\operatorname{sign}(0) = +1` (eq. 1) and a zero gradient.

    .. math::
        q(x) = \begin{cases} +1 & x \ge 0 \\ -1 & x < 0 \end{cases}
        \qquad \frac{\partial q}{\partial x} = 0

    Use it for weights that are binary already (it keeps them so) and for evaluation. For training through the
    binarization use :func:`ste_sign`.

    Args:
        x: a floating-point tensor.

    Returns:
        A tensor of x's shape and dtype, with values in {-1, +1}.

    Example:
        >>> sign(torch.tensor([-2.0, -0.0, 0.0, 3.0]))
        tensor([-1.,  1.,  1.,  1.])
        >>> torch.sign(torch.tensor([0.0]))  # for comparison
        tensor([0.])
    """
    return _binarize(x)


def ste_sign(x: Tensor, clip_value: float = 1.0) -> Tensor:
    r"""Sign with the saturating straight-through estimator (eq. 4 of the report).

    .. math::
        q(x) = \begin{cases} +1 & x \ge 0 \\ -1 & x < 0 \end{cases}
        \qquad \frac{\partial q}{\partial x} = \begin{cases} 1 & |x| \le c \\ 0 & |x| > c \end{cases}

    where :math:`c` is ``clip_value``: the gradient passes through unchanged where :math:`|x| \le c` (boundary
    included) and is cancelled where the input saturates, and at a NaN input (the gradient there is 0, the forward
    +1).

    Args:
        x: a floating-point tensor.
        clip_value: :math:`c > 0`; ``math.inf`` gives the plain (unclipped) straight-through estimator.

    Example:
        >>> x = torch.tensor([-2.0, -1.0, 0.0, 0.5, 1.5], requires_grad=True)
        >>> ste_sign(x, clip_value=1.0).sum().backward()
        >>> x.grad
        tensor([0., 1., 1., 1., 0.])
    """
    return SteSignFunction.apply(x, _validate_positive("clip_value", clip_value))


def stochastic_sign(x: Tensor, generator: torch.Generator | None = None) -> Tensor:
    r"""Stochastic binarization (eqs. 2-3 of the report) with the straight-through backward of :func:`ste_sign`.

    .. math::
        q(x) = \begin{cases} +1 & \text{with probability } p = \sigma_h(x) \\ -1 & \text{with probability } 1 - p
        \end{cases}, \quad \sigma_h(x) = \operatorname{clip}\Big(\frac{x + 1}{2}, 0, 1\Big)
        \qquad \frac{\partial q}{\partial x} = 1_{|x| \le 1}

    so :math:`\mathbb{E}[q(x)] = 2\sigma_h(x) - 1 = \operatorname{clip}(x, -1, 1)`. Inputs :math:`\ge 1` always give
    +1 and inputs :math:`\le -1` always give -1; a NaN input gives -1, with gradient 0.

    Args:
        x: a floating-point tensor.
        generator: draws the uniform noise; pass a seeded ``torch.Generator`` on x's device for reproducible samples.
            ``None`` uses torch's global generator.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> stochastic_sign(torch.tensor([-3.0, 3.0]), generator=g)
        tensor([-1.,  1.])
        >>> x = torch.zeros(10_000)
        >>> abs(stochastic_sign(x, generator=g).mean().item()) < 0.05  # E[q(0)] = 0
        True
    """
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    return StochasticSignFunction.apply(x, generator)


def approx_sign(x: Tensor) -> Tensor:
    r"""Sign with the piecewise-polynomial surrogate gradient of Bi-Real Net (Larq's ``approx_sign``).

    .. math::
        q(x) = \begin{cases} +1 & x \ge 0 \\ -1 & x < 0 \end{cases}
        \qquad \frac{\partial q}{\partial x} = \begin{cases} 2 - 2|x| & |x| < 1 \\ 0 & |x| \ge 1 \end{cases}

    the derivative of the piecewise quadratic :math:`2x + x^2 \operatorname{sign}(-x)` clipped to [-1, 1]. At a
    NaN input the gradient is 0 (as in Larq) and the forward +1.

    Example:
        >>> x = torch.tensor([-1.0, -0.5, 0.0, 0.25, 2.0], requires_grad=True)
        >>> approx_sign(x).sum().backward()
        >>> x.grad
        tensor([0.0000, 1.0000, 2.0000, 1.5000, 0.0000])
    """
    return ApproxSignFunction.apply(x)


def swish_sign(x: Tensor, beta: float = 5.0) -> Tensor:
    r"""Sign with the SignSwish surrogate gradient of BNN+ (Larq's ``swish_sign``).

    .. math::
        q(x) = \begin{cases} +1 & x \ge 0 \\ -1 & x < 0 \end{cases}
        \qquad \frac{\partial q}{\partial x} = \frac{\beta \big(2 - \beta x \tanh(\beta x / 2)\big)}{1 + \cosh(\beta x)}

    the derivative of :math:`2\sigma(\beta x)\big(1 + \beta x (1 - \sigma(\beta x))\big) - 1`. It peaks at
    :math:`\beta` for :math:`x = 0` and is slightly negative for large :math:`|x|`. It is 0 at :math:`x = \pm\infty`
    (its limit; the formula gives NaN there) and at a NaN input (where the forward gives +1).

    Args:
        x: a floating-point tensor.
        beta: :math:`\beta > 0`, the sharpness; larger is closer to the sign function.

    Example:
        >>> x = torch.tensor([0.0, 0.2, 1.0], requires_grad=True)
        >>> swish_sign(x, beta=5.0).sum().backward()
        >>> x.grad
        tensor([ 5.0000,  3.0237, -0.1950])
    """
    return SwishSignFunction.apply(x, _validate_positive("beta", beta))


# ----------------------------------------------------------------------------------------------------------------------
# Modules


class Sign(nn.Module):
    r"""Module form of :func:`sign`: binarization with :math:`\operatorname{sign}(0) = +1` and a zero gradient.

    Example:
        >>> Sign()(torch.tensor([-0.3, 0.0, 0.7]))
        tensor([-1.,  1.,  1.])
    """

    def forward(self, x: Tensor) -> Tensor:
        return _binarize(x)


class SteSign(nn.Module):
    r"""Module form of :func:`ste_sign`: sign forward, gradient :math:`1_{|x| \le c}` backward.

    The default input quantizer of the binary layers.

    Args:
        clip_value: :math:`c > 0`, beyond which the gradient is cancelled.

    Example:
        >>> q = SteSign(clip_value=1.0)
        >>> q
        SteSign(clip_value=1.0)
        >>> q(torch.tensor([-0.2, 0.0, 4.0]))
        tensor([-1.,  1.,  1.])
    """

    def __init__(self, clip_value: float = 1.0) -> None:
        super().__init__()
        self.clip_value = _validate_positive("clip_value", clip_value)

    def forward(self, x: Tensor) -> Tensor:
        return SteSignFunction.apply(x, self.clip_value)

    def extra_repr(self) -> str:
        return f"clip_value={self.clip_value}"


class StochasticSign(nn.Module):
    r"""Module form of :func:`stochastic_sign`: +1 with probability :math:`\operatorname{clip}((x + 1) / 2, 0, 1)`.

    It samples in training and in evaluation alike (no hidden switch on ``model.eval()``); use :class:`SteSign` or
    :class:`Sign` where a deterministic quantizer is wanted.

    Args:
        generator: a ``torch.Generator`` on the input's device for reproducible samples, or ``None`` for torch's
            global generator. It is not part of the module's ``state_dict``.

    Example:
        >>> q = StochasticSign(generator=torch.Generator().manual_seed(0))
        >>> q
        StochasticSign(generator=Generator(device=cpu))
        >>> q(torch.tensor([-5.0, 5.0]))
        tensor([-1.,  1.])
    """

    def __init__(self, generator: torch.Generator | None = None) -> None:
        super().__init__()
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
        self.generator = generator

    def forward(self, x: Tensor) -> Tensor:
        return StochasticSignFunction.apply(x, self.generator)

    def extra_repr(self) -> str:
        if self.generator is None:
            return "generator=None"
        return f"generator=Generator(device={self.generator.device})"


class ApproxSign(nn.Module):
    r"""Module form of :func:`approx_sign`: sign forward, Bi-Real Net's :math:`\max(0, 2 - 2|x|)` backward.

    Example:
        >>> ApproxSign()(torch.tensor([-0.1, 0.1]))
        tensor([-1.,  1.])
    """

    def forward(self, x: Tensor) -> Tensor:
        return ApproxSignFunction.apply(x)


class SwishSign(nn.Module):
    r"""Module form of :func:`swish_sign`: sign forward, the SignSwish derivative backward.

    Args:
        beta: :math:`\beta > 0`, the sharpness of the surrogate.

    Example:
        >>> SwishSign(beta=10.0)
        SwishSign(beta=10.0)
    """

    def __init__(self, beta: float = 5.0) -> None:
        super().__init__()
        self.beta = _validate_positive("beta", beta)

    def forward(self, x: Tensor) -> Tensor:
        return SwishSignFunction.apply(x, self.beta)

    def extra_repr(self) -> str:
        return f"beta={self.beta}"
