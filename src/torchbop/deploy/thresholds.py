r"""Batch norm and the sign folded into one integer comparison per channel, exact for every reachable input.

A binary convolution or dense layer with :math:`K` real +-1 products per output (zero, +1 or -1 padding
included) produces an integer :math:`x \in [-K, K]`. The model then computes, in float32, a chain of per-channel
operations and the sign (sign(0) = +1, :func:`torchbop.quantizers.sign`)::

    v = x * alpha   (the weight scale, XNOR-Net's alpha, arXiv:1603.05279; absent on most layers)
    v = v + bias    (the layer's bias; absent on most layers)
    y = F.batch_norm(v, mean, var, gamma, beta, eps)     (eval mode; gamma, beta may be absent)
    s = sign(y)  -> the next binary layer's input, packed as the bit (y < 0)

Why one comparison suffices. Every float operation above is weakly monotone in its input: a product with a fixed
factor, a sum with a fixed term, the batch norm's ``(v - mean) * invstd * gamma + beta`` (whatever order torch
evaluates it in) all round to nearest, and rounding to nearest is monotone, so two inputs never swap order (they
may merge). The sign is monotone too. So :math:`s(x)` is monotone in the integer :math:`x`, increasing or
decreasing, and changes at most once on :math:`[-K, K]`:

- increasing (:math:`\alpha \gamma > 0`): :math:`s(x) = -1` exactly for :math:`x < T`, the bit is ``x < T``;
- decreasing (:math:`\alpha \gamma < 0`, a negative batch-norm scale or weight scale): :math:`s(x) = -1` exactly
  for :math:`x \ge T`, the bit is ``(x < T) ^ 1``: the same comparison and a per-channel ``flip``;
- constant (:math:`\gamma = 0`, or a threshold outside :math:`[-K, K]`): ``T = -K`` with ``flip`` the constant.

Why :math:`T` is exact. Solving :math:`\gamma (x\alpha + b - \mu) / \sqrt{\sigma^2 + \epsilon} + \beta = 0` in
real numbers and rounding would be exact only up to the float rounding of each step, and a tie (an :math:`x` whose
float :math:`y` is exactly 0, which sign sends to +1) or a near-tie could land on either side. Instead
:func:`sign_thresholds` evaluates the model's own float operations (the same torch calls, :func:`F.batch_norm`
included, on float32) at *every* reachable integer :math:`-K \dots K` of every channel (``2K + 1`` values,
thousands at most: cheap, once per layer) and reads :math:`T` off the resulting signs. The comparison then agrees
with the float model on every reachable input by construction, whatever the rounding, ties at zero (``y == 0``
and ``y == -0.0`` give +1), zero variance (``invstd = 1 / sqrt(eps)``, finite for ``eps > 0``), a zero or
negative :math:`\gamma`, a negative :math:`\alpha`, and a bias. The monotonicity argued above is checked, not
assumed: a channel whose signs change more than once (it cannot happen with the operations above, but a future
batch norm kernel could differ) makes :func:`sign_thresholds` return None and the engine keeps that layer's
float path. ``F.batch_norm`` gives the same values for a ``[2K + 1, C]`` input as for the model's ``[N, C, H, W]``
feature maps in either memory format (it applies one per-channel affine map elementwise); the tests check the
thresholds against the model's own batch-norm modules on feature maps, on every channel of every exported model.

Max pooling between the layer and the batch norm (BinaryNet's ``conv -> maxpool -> BN -> sign``): the pooling
takes the maximum of the values :math:`v`, and :math:`\operatorname{sign} \circ \mathrm{BN}` is monotone in
:math:`v`, increasing when :math:`\gamma \ge 0` (or absent), so ``sign(BN(max v)) = max sign(BN(v))``: the
maximum of +-1 values, the AND of the bits (bit 1 = -1). Where :math:`\gamma < 0` it is the *minimum*, the OR of
the bits, computed as ``NOT AND NOT``: the layer writes the complemented bit (``flip ^ 1``) and the pooling
complements its AND again (:attr:`Thresholds.pool_flip`).

This is the folding of Larq Compute Engine's binary convolutions with a "bitpacked output" (its converter's
``FuseBatchNormIntoBConv`` and output thresholds; larq/compute-engine, ``larq_compute_engine/mlir``); LCE solves for
the threshold in floating point, here it is read off an exhaustive evaluation so that it is exact.

A real-valued layer (the first convolution on pixels) has float outputs, not integers: the same monotonicity gives
a float32 threshold per channel, and :func:`float_sign_thresholds` finds it by bisection over the float32 values
in their order (32 steps, each evaluating the model's batch norm): the smallest float whose sign differs from that
of -inf. The comparison ``(v < t) ^ flip`` then equals ``sign(BN(v))`` for every finite float32 ``v``.

Example:
    >>> import torch
    >>> post = lambda v: torch.nn.functional.batch_norm(v, torch.tensor([2.0, 0.0]), torch.ones(2),
    ...                                                 torch.tensor([1.0, -1.0]), None, False, 0.0, 0.0)
    >>> t = sign_thresholds(post, fan_in=4, channels=2)
    >>> t.threshold.tolist(), t.flip.tolist()   # channel 0: -1 below 2; channel 1: -1 from 1 on (-x < 0)
    ([2, 1], [0, 1])
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["Thresholds", "sign_thresholds", "float_sign_thresholds"]


@dataclass
class Thresholds:
    """Per output channel: the bit (-1) is ``(x < threshold) ^ flip`` for an integer pre-activation ``x``.

    ``pool_flip`` (uint8, 1 where the batch norm's scale is negative) says how a max pooling between the layer and
    the batch norm combines the bits: the layer writes ``(x < threshold) ^ flip ^ pool_flip``, the pooling ANDs
    and then XORs ``pool_flip`` again (see the module docstring).
    """

    threshold: Tensor  # int32 [C]
    flip: Tensor  # uint8 [C]
    fan_in: int
    pool_flip: Tensor | None = None  # uint8 [C]

    def bits(self, x: Tensor) -> Tensor:
        """The bit (True = -1) of integer pre-activations ``x`` ``[..., C]``."""
        return (x < self.threshold) ^ self.flip.bool()


def sign_thresholds(post: Callable[[Tensor], Tensor], fan_in: int, channels: int) -> Thresholds | None:
    """The thresholds of ``sign(post(x))`` for integers ``x`` in ``[-fan_in, fan_in]``, or None when some channel's
    sign is not monotone in ``x``.

    Args:
        post: the model's float operations after the integer product, on a float32 ``[R, channels]`` tensor (one
            row per integer), returning the value whose sign is taken.
        fan_in: ``K``, the number of +-1 products per output.
        channels: output channels.
    """
    xs = torch.arange(-fan_in, fan_in + 1, dtype=torch.int64)
    with torch.no_grad():
        values = post(xs.to(torch.float32)[:, None].expand(-1, channels).contiguous())
    negative = values < 0  # the bit: sign(y) = -1; 0, -0.0 and NaN give +1 as torchbop's sign
    count = negative.sum(0).to(torch.int64)  # per channel
    falling = (negative[1:] <= negative[:-1]).all(0)  # -1 ... -1, +1 ... +1: increasing s
    rising = (negative[1:] >= negative[:-1]).all(0)  # +1 ... +1, -1 ... -1: decreasing s
    if not bool((falling | rising).all()):
        return None
    rows = xs.numel()
    threshold = torch.where(falling, -fan_in + count, -fan_in + rows - count)
    flip = (~falling).to(torch.uint8)
    return Thresholds(threshold.to(torch.int32), flip, fan_in)


def _ordered(keys: Tensor) -> Tensor:
    """int64 keys in ``[-0x7F800000, 0x7F800000]`` to the float32 values in the same order (key 0 is +0.0)."""
    magnitude = keys.abs().to(torch.int32).view(torch.float32)
    return torch.where(keys < 0, -magnitude, magnitude)


def float_sign_thresholds(post: Callable[[Tensor], Tensor], channels: int) -> tuple[Tensor, Tensor] | None:
    """float32 ``threshold`` and uint8 ``flip`` ``[channels]``: the bit (-1) of ``sign(post(v))`` is
    ``(v < threshold) ^ flip`` for every finite float32 ``v``; None where the sign at -inf, at the threshold found
    or at +inf contradicts monotonicity.

    ``post`` maps a float32 ``[R, channels]`` tensor to the value whose sign is taken (see the module docstring).
    """

    def negative(keys: Tensor) -> Tensor:
        with torch.no_grad():
            return post(_ordered(keys)[None, :].expand(1, channels).contiguous())[0] < 0

    low = torch.full((channels,), -0x7F800000, dtype=torch.int64)  # -inf
    high = torch.full((channels,), 0x7F800000, dtype=torch.int64)  # +inf
    at_low, at_high = negative(low), negative(high)
    flip = (~at_low).to(torch.uint8)  # +1 at -inf: the sign falls, the bit rises
    # smallest key whose bit differs from the bit at -inf (binary search; high is such a key or the constant case)
    lo, hi = low.clone(), high.clone()
    while bool((hi - lo > 1).any()):
        mid = (lo + hi) // 2
        moved = negative(mid) != at_low
        hi = torch.where(moved, mid, hi)
        lo = torch.where(moved, lo, mid)
    constant = at_low == at_high
    threshold = torch.where(constant, high, hi)  # constant: v < +inf holds for every finite v: bit = at_low
    if not bool((negative(hi) != at_low)[~constant].all()):
        return None
    values = _ordered(threshold)
    # constant channels: the bit is at_low for every v: (v < +inf) ^ flip = 1 ^ flip = at_low
    return values.contiguous(), flip.contiguous()
