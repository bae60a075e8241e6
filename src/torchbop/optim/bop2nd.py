r"""Bop2ndOrder: Bop with a second-moment normalization (Suarez-Ramirez et al., "A Bop and Beyond", 2021).

The first moment ``m`` alone makes the flip threshold scale-dependent: a layer whose gradients are 100 times larger
flips 100 times more easily. Dividing by the root of an exponential moving average of the squared gradient, as Adam
does, makes ``tau`` a threshold on a normalized signal. Suarez-Ramirez et al. report 91.9% on CIFAR-10 BinaryNet.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from torchbop.optim._validation import validate_scalar
from torchbop.optim.bop import Bop, flip_mask

__all__ = ["Bop2ndOrder", "bop2nd"]


class Bop2ndOrder(Bop):
    r"""Bop with a second moment.

    .. math::
        \begin{aligned}
            &m_t \leftarrow m_{t-1} + \gamma \, (g_t - m_{t-1}), \qquad m_0 = 0 \\
            &v_t \leftarrow v_{t-1} + \sigma \, (g_t^2 - v_{t-1}), \qquad v_0 = 0 \\
            &w_t \leftarrow -w_{t-1} \textbf{ if } w_{t-1} \, \frac{m_t}{\sqrt{v_t} + \epsilon} > \tau
                \textbf{ else } w_{t-1}
        \end{aligned}

    Everything else (gamma as the group's ``lr``, ``tie_break``, ``nonfinite``, ``state[p]["flips"]``,
    ``m_init``, the checks of every group's hyperparameters at every step) is as in :class:`~torchbop.optim.Bop`.
    There is no bias correction, as in the authors' code. At each step, besides gamma and the threshold, sigma must
    be in [0, 1] and eps in (0, inf]; ``nonfinite`` is ``"raise"`` or ``"skip"`` (no ``"mask"``).

    .. note::
        ``eps`` defaults to ``1e-10``, the literal the authors' TensorFlow code adds to ``sqrt(v)`` in the update of
        its ``Bop2ndOrder`` (``m / (sqrt(v) + 1e-10)``, CuauSuarez/Bop2ndOrder, ``bnn_optimization/optimizers.py``);
        it is not Keras' epsilon (1e-7). The difference matters where ``sqrt(v)`` is small: with
        ``g = 1e-9``, ``gamma = sigma = 1`` the normalized moment is ``1e-9 / (1e-9 + eps)``, 0.91 with the authors'
        eps but 0.0099 with 1e-7.

    Args:
        params: binary parameters or parameter groups.
        gamma: first-moment adaptivity rate in (0, 1]. Default 1e-6 (the authors' default).
        sigma: second-moment adaptivity rate in (0, 1]. Default 1e-2.
        threshold: flip threshold tau >= 0 on the normalized moment. Default 1e-6.
        eps: added to ``sqrt(v)``, > 0. Default 1e-10 (the authors' code).

    Example:
        >>> w = torch.nn.Parameter(torch.tensor([1.0, -1.0]))
        >>> opt = Bop2ndOrder([w], gamma=0.5, sigma=0.5, threshold=0.5)
        >>> w.grad = torch.tensor([4.0, 0.01])  # m = [2, 0.005], sqrt(v) = [2.83, 0.007]: w*m/sqrt(v) = [0.71, -0.71]
        >>> opt.step()
        >>> w.data
        tensor([-1., -1.])
    """

    _STEP_CHECKS = Bop._STEP_CHECKS + (
        ("sigma", "sigma", 0.0, 1.0, True),
        ("eps", "eps", 0.0, math.inf, False),
    )
    _NONFINITE_POLICIES = ("raise", "skip")
    _PARAM_SHAPED_STATE = ("exp_avg", "exp_avg_sq")

    def __init__(
        self,
        params: Any,
        gamma: float = 1e-6,
        sigma: float = 1e-2,
        threshold: float = 1e-6,
        eps: float = 1e-10,
        **kwargs: Any,
    ) -> None:
        validate_scalar("sigma", sigma, low=0.0, high=1.0, low_inclusive=False)
        validate_scalar("eps", eps, low=0.0, low_inclusive=False)
        if kwargs.get("fused"):
            raise RuntimeError("Bop2ndOrder has no fused implementation; use foreach (the default).")
        if kwargs.get("nonfinite") == "mask":
            raise ValueError("Invalid nonfinite value: 'mask' (Bop2ndOrder supports 'raise' and 'skip')")
        self._second_order_defaults = dict(sigma=sigma, eps=eps)
        super().__init__(params, gamma=gamma, threshold=threshold, **kwargs)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        for key, value in self._second_order_defaults.items():
            param_group.setdefault(key, value)
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        validate_scalar("sigma", group["sigma"], low=0.0, high=1.0, low_inclusive=False)
        validate_scalar("eps", group["eps"], low=0.0, low_inclusive=False)

    def _init_state(self, p: Tensor, group: dict[str, Any], state: dict[str, Any]) -> None:
        super()._init_state(p, group, state)
        state["exp_avg_sq"] = torch.zeros_like(state["exp_avg"], memory_format=torch.preserve_format)

    def _update_group(self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor],
                      states: list[dict]) -> list[Tensor]:
        return bop2nd(
            params, grads, [s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states],
            gamma=group["lr"], sigma=group["sigma"], threshold=group["threshold"], eps=group["eps"],
            tie_break=group["tie_break"], foreach=group["foreach"],
        )


def bop2nd(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    *,
    gamma: float,
    sigma: float,
    threshold: float,
    eps: float,
    tie_break: str = "larq",
    foreach: bool | None = None,
) -> list[Tensor]:
    """Functional Bop2ndOrder; returns the flip count of each tensor. See :class:`Bop2ndOrder`."""
    impl = _single_tensor_bop2nd if foreach is False else _multi_tensor_bop2nd
    return impl(params, grads, exp_avgs, exp_avg_sqs, gamma=gamma, sigma=sigma, threshold=threshold, eps=eps,
                tie_break=tie_break)


def _single_tensor_bop2nd(params, grads, exp_avgs, exp_avg_sqs, *, gamma, sigma, threshold, eps, tie_break):
    """The reference, one equation a line."""
    flips = []
    for w, g, m, v in zip(params, grads, exp_avgs, exp_avg_sqs):
        g = g.to(m.dtype)
        m.add_((g - m) * gamma)
        v.add_((g * g - v) * sigma)
        signal = w.to(m.dtype) * (m / (v.sqrt() + eps))
        flip = flip_mask(w, signal, threshold, tie_break)
        flips.append(flip.sum())
        w.copy_(torch.where(flip, -w, w))
    return flips


def _multi_tensor_bop2nd(params, grads, exp_avgs, exp_avg_sqs, *, gamma, sigma, threshold, eps, tie_break):
    """``torch._foreach_*`` path; bit-identical to the reference."""
    flips: list[Tensor] = [None] * len(params)  # type: ignore[list-item]
    buckets = Optimizer._group_tensors_by_device_and_dtype([params, grads, exp_avgs, exp_avg_sqs], with_indices=True)
    for (w_list, g_list, m_list, v_list), indices in buckets.values():
        if g_list[0].dtype != m_list[0].dtype:
            g_list = [g.to(m_list[0].dtype) for g in g_list]
        delta = torch._foreach_sub(g_list, m_list)
        torch._foreach_mul_(delta, gamma)
        torch._foreach_add_(m_list, delta)
        torch._foreach_mul_(delta, 0.0)  # reuse the buffer: delta <- g * g - v
        torch._foreach_addcmul_(delta, g_list, g_list)
        torch._foreach_sub_(delta, v_list)
        torch._foreach_mul_(delta, sigma)
        torch._foreach_add_(v_list, delta)
        denom = torch._foreach_sqrt(v_list)
        torch._foreach_add_(denom, eps)
        signal = torch._foreach_div(m_list, denom)
        torch._foreach_mul_(signal, [w.to(m.dtype) for w, m in zip(w_list, m_list)])
        for i, w, s in zip(indices, w_list, signal):
            flip = flip_mask(w, s, threshold, tie_break)
            flips[i] = torch.count_nonzero(flip)
            torch.where(flip, -w, w, out=w)
    return flips
