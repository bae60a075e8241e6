r"""Bop2ndOrder: Bop with a second-moment normalization (Suarez-Ramirez et al., "A Bop and Beyond", 2021).

The first moment ``m`` alone makes the flip threshold scale-dependent: a layer whose gradients are 100 times larger
flips 100 times more easily. Dividing by the root of an exponential moving average of the squared gradient, as Adam
does, makes ``tau`` a threshold on a normalized signal. Suarez-Ramirez et al. report 91.9% on CIFAR-10 BinaryNet.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from torchbop.optim import _fused
from torchbop.optim._validation import validate_group_scalar, validate_scalar
from torchbop.optim.bop import (
    EAGER_MIN_ENTRIES,
    Bop,
    count,
    eager_chunks,
    flip_indicator,
    flip_mask,
    flip_thresholds,
    larq_bounds,
)

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
    ``m_init``, the checks of every group's hyperparameters at every step, and ``fused``/``foreach``: by default the
    compiled kernel, eight tensors per call, wherever ``torch.compile`` works, else the eager path) is as in
    :class:`~torchbop.optim.Bop`; the kernel reads w, g, m and v once and writes m, v and w.
    At each step, besides gamma and the threshold, sigma must be in [0, 1] and eps in (0, inf]; ``nonfinite`` is
    ``"raise"`` or ``"skip"`` (no ``"mask"``).

    **The unbiased variant** (``unbiased=True``, keyword-only, off by default) is the authors' ``Bop2ndOrder_unbiased``
    (their hyperparameter set ``bop2ndOrder_unbiased``, 91.4% on CIFAR-10 against 91.9% for the default): ``m`` and
    ``v`` are updated as above, and the flip test divides them by their rates,

    .. math::
        w_t \leftarrow -w_{t-1} \textbf{ if } w_{t-1} \, \frac{m_t / \gamma}{\sqrt{v_t / \sigma} + \epsilon} > \tau
            \textbf{ else } w_{t-1}

    computed in that order (``m / gamma``, ``v / sigma``, the root, ``+ eps``, the quotient, times ``w``), with the
    current (scheduled) gamma and sigma, which must then be positive at every step. This is *not* Adam's bias
    correction ``m / (1 - (1 - gamma)^t)``: it rescales ``m`` by ``1 / gamma`` and ``v`` by ``1 / sigma`` at every
    step. The class is defined in ``bnn_optimization/optimizers.py`` of CuauSuarez/Bop2ndOrder at commit b2f8b185
    and dropped from the later version of that file (b2c314c2), which the models still import; torchbop follows
    b2f8b185 flip for flip (tested against a NumPy transcription of it). One limit, for both variants: torch's float32
    ``sqrt`` on CPU is not always correctly rounded (IEEE, as NumPy and CUDA compute it), so a signal within an ulp of
    ``tau`` may flip otherwise than there.

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
        unbiased: keyword-only; ``True`` for the authors' unbiased variant (see above). Default ``False``.

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
        *,
        unbiased: bool = False,
        **kwargs: Any,
    ) -> None:
        validate_scalar("sigma", sigma, low=0.0, high=1.0, low_inclusive=False)
        validate_scalar("eps", eps, low=0.0, low_inclusive=False)
        _validate_unbiased(unbiased)
        if kwargs.get("nonfinite") == "mask":
            raise ValueError("Invalid nonfinite value: 'mask' (Bop2ndOrder supports 'raise' and 'skip')")
        self._second_order_defaults = dict(sigma=sigma, eps=eps, unbiased=unbiased)
        super().__init__(params, gamma=gamma, threshold=threshold, **kwargs)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        for key, value in self._second_order_defaults.items():
            param_group.setdefault(key, value)
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        validate_scalar("sigma", group["sigma"], low=0.0, high=1.0, low_inclusive=False)
        validate_scalar("eps", group["eps"], low=0.0, low_inclusive=False)
        _validate_unbiased(group["unbiased"])

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        for group in self.param_groups:
            group.setdefault("unbiased", False)  # state dicts saved before the option existed

    def _check_hyperparameters(self) -> None:
        super()._check_hyperparameters()
        for index, group in enumerate(self.param_groups):
            if group.get("unbiased", False):  # the flip test divides by gamma and sigma: both must be positive
                validate_group_scalar(index, "gamma", "lr", group["lr"], low=0.0, high=1.0, low_inclusive=False)
                validate_group_scalar(index, "sigma", "sigma", group["sigma"], low=0.0, high=1.0, low_inclusive=False)

    def _init_state(self, p: Tensor, group: dict[str, Any], state: dict[str, Any]) -> None:
        super()._init_state(p, group, state)
        state["exp_avg_sq"] = torch.zeros_like(state["exp_avg"], memory_format=torch.preserve_format)

    def _update_group(
        self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor], states: list[dict]
    ) -> list[Tensor]:
        return bop2nd(
            params,
            grads,
            [s["exp_avg"] for s in states],
            [s["exp_avg_sq"] for s in states],
            gamma=group["lr"],
            sigma=group["sigma"],
            threshold=group["threshold"],
            eps=group["eps"],
            tie_break=group["tie_break"],
            unbiased=group.get("unbiased", False),
            foreach=group["foreach"],
            fused=group["fused"],
        )


def _validate_unbiased(value: Any) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"Invalid unbiased value: {value!r} (expected True or False)")


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
    unbiased: bool = False,
    foreach: bool | None = None,
    fused: bool | None = None,
) -> list[Tensor]:
    """Functional Bop2ndOrder; returns the flip count of each tensor. See :class:`Bop2ndOrder` (and
    :class:`~torchbop.optim.Bop` for how ``fused`` and ``foreach`` choose the implementation)."""
    keys = {
        (p.device.type, p.dtype, g.dtype, m.dtype)
        for p, g, m in zip(params, grads, exp_avgs)
        if _fused.worth_compiling(p, fused)
    }
    kernel = "bop2nd_unbiased" if unbiased else "bop2nd"
    probe = functools.partial(_probe_fused_bop2nd, unbiased=unbiased)
    if _fused.choose("Bop2ndOrder", kernel, keys, probe, fused=fused, foreach=foreach):
        impl = functools.partial(_fused_bop2nd, fused=fused)
    elif foreach is False or _fused.is_compiling():
        impl = _single_tensor_bop2nd
    else:
        impl = _multi_tensor_bop2nd
    return impl(
        params,
        grads,
        exp_avgs,
        exp_avg_sqs,
        gamma=gamma,
        sigma=sigma,
        threshold=threshold,
        eps=eps,
        tie_break=tie_break,
        unbiased=unbiased,
    )


def _rate(value: float, like: Tensor) -> Tensor:
    """A rate as a 0-dim tensor beside ``like``, to divide by: CUDA divides by a Python number as a multiplication by
    its reciprocal, which rounds otherwise than the authors' division (and than the CPU's)."""
    return torch.tensor(value, dtype=like.dtype, device=like.device)


def _single_tensor_bop2nd(
    params, grads, exp_avgs, exp_avg_sqs, *, gamma, sigma, threshold, eps, tie_break, unbiased=False
):
    """The reference, one equation a line."""
    flips = []
    for w, g, m, v in zip(params, grads, exp_avgs, exp_avg_sqs):
        g = g.to(m.dtype)
        m.add_((g - m) * gamma)
        v.add_((g * g - v) * sigma)
        if unbiased:  # the authors' Bop2ndOrder_unbiased: m / gamma over sqrt(v / sigma)
            signal = w.to(m.dtype) * ((m / _rate(gamma, m)) / ((v / _rate(sigma, v)).sqrt() + eps))
        else:
            signal = w.to(m.dtype) * (m / (v.sqrt() + eps))
        flip = flip_mask(w, signal, threshold, tie_break)
        flips.append(flip.sum())
        w.copy_(torch.where(flip, -w, w))
    return flips


def _multi_tensor_bop2nd(
    params, grads, exp_avgs, exp_avg_sqs, *, gamma, sigma, threshold, eps, tie_break, unbiased=False
):
    """Eager path, bit-identical to the reference, in cache-sized chunks (as Bop's ``_multi_tensor_bop``)."""
    flips: list[Tensor] = [None] * len(params)  # type: ignore[list-item]
    threshold = float(threshold)
    kwargs = dict(gamma=gamma, sigma=sigma, threshold=threshold, eps=eps, tie_break=tie_break, unbiased=unbiased)
    small = [i for i, w in enumerate(params) if w.numel() < EAGER_MIN_ENTRIES]
    large = [i for i, w in enumerate(params) if w.numel() >= EAGER_MIN_ENTRIES]
    if small:  # a handful of operations on whole tensors beats chunking them
        lists = (params, grads, exp_avgs, exp_avg_sqs)
        for i, n in zip(small, _single_tensor_bop2nd(*([x[i] for i in small] for x in lists), **kwargs)):
            flips[i] = n
        params, grads, exp_avgs, exp_avg_sqs = ([x[i] for i in large] for x in lists)
    if not params:
        return flips
    buckets = Optimizer._group_tensors_by_device_and_dtype([params, grads, exp_avgs, exp_avg_sqs], with_indices=True)
    for (device, _), ((w_list, g_list, m_list, v_list), indices) in buckets.items():
        chunk = eager_chunks(device, [w.numel() for w in w_list])
        scratch = torch.empty(2, chunk, dtype=m_list[0].dtype, device=device)
        bounds = larq_bounds(threshold, w_list[0].dtype, scratch.dtype) if tie_break == "larq" else None
        rates = (_rate(gamma, scratch), _rate(sigma, scratch)) if unbiased else None
        for i, w, g, m, v in zip((large[j] for j in indices), w_list, g_list, m_list, v_list):
            flat = _fused.flat_views(w, g, m, v, alias=False)
            if flat is None or m.dtype != scratch.dtype or v.dtype != m.dtype:
                flips[i] = _single_tensor_bop2nd([w], [g], [m], [v], **kwargs)[0]
                continue
            counts = []
            for wc, gc, mc, vc in zip(*(t.split(chunk) for t in flat)):
                gc = gc.to(mc.dtype)  # g * g is squared in m's dtype, as in the reference
                d, a = scratch if wc.numel() == chunk else scratch[:, : wc.numel()]
                torch.sub(gc, mc, out=d)
                d.mul_(gamma)
                mc.add_(d)
                torch.mul(gc, gc, out=d)
                d.sub_(vc)
                d.mul_(sigma)
                vc.add_(d)
                if unbiased:  # (m / gamma) / (sqrt(v / sigma) + eps), in the reference's order
                    torch.div(vc, rates[1], out=d)
                    d.sqrt_()
                    d.add_(eps)
                    torch.div(mc, rates[0], out=a)
                    torch.div(a, d, out=d)
                else:
                    torch.sqrt(vc, out=d)
                    d.add_(eps)
                    torch.div(mc, d, out=d)
                d.mul_(wc)
                flip = flip_indicator(d, wc, a, threshold, tie_break, bounds)
                counts.append(flip.sum())
                wc.addcmul_(wc, flip, value=-2)
            flips[i] = count(counts)
    return flips


def _bop2nd_kernel(
    w: Tensor,
    g: Tensor,
    m: Tensor,
    v: Tensor,
    gamma: Tensor,
    sigma: Tensor,
    eps: Tensor,
    above_neg: Tensor,
    above_pos: Tensor,
) -> Tensor:
    """The whole step for one flattened tensor, as the reference computes it; compiled, it reads w, g, m and v once
    and writes m, v and w (seven streams), and returns the number of flips."""
    g = g.to(m.dtype)
    new_m = m + (g - m) * gamma
    new_v = v + (g * g - v) * sigma
    wf = w.to(m.dtype)
    flip = wf * (new_m / (new_v.sqrt() + eps)) > torch.where(wf < 0, above_neg, above_pos)
    m.copy_(new_m)
    v.copy_(new_v)
    w.copy_(torch.where(flip, -w, w))
    return flip.sum(dtype=torch.int32).to(torch.int64)


def _bop2nd_unbiased_kernel(
    w: Tensor,
    g: Tensor,
    m: Tensor,
    v: Tensor,
    gamma: Tensor,
    sigma: Tensor,
    eps: Tensor,
    above_neg: Tensor,
    above_pos: Tensor,
) -> Tensor:
    """:func:`_bop2nd_kernel` with the unbiased flip test ``w (m / gamma) / (sqrt(v / sigma) + eps)``."""
    g = g.to(m.dtype)
    new_m = m + (g - m) * gamma
    new_v = v + (g * g - v) * sigma
    wf = w.to(m.dtype)
    flip = wf * ((new_m / gamma) / ((new_v / sigma).sqrt() + eps)) > torch.where(wf < 0, above_neg, above_pos)
    m.copy_(new_m)
    v.copy_(new_v)
    w.copy_(torch.where(flip, -w, w))
    return flip.sum(dtype=torch.int32).to(torch.int64)


def _fused_bop2nd(
    params, grads, exp_avgs, exp_avg_sqs, *, gamma, sigma, threshold, eps, tie_break, unbiased=False, fused=True
):
    """The compiled kernel, one call per ``_fused.ARITY`` tensors; a tensor the kernel cannot take (or, with
    ``fused=None``, too small to be worth a call, unless a call has a slot free for it) goes to the eager path."""
    flips, rest = _fused.apply(
        _bop2nd_unbiased_kernel if unbiased else _bop2nd_kernel,
        params,
        grads,
        exp_avgs,
        exp_avg_sqs,
        fused=fused,
        hyperparameters=lambda dtype: (gamma, sigma, eps, *flip_thresholds(float(threshold), tie_break, dtype)),
    )
    if rest:
        out = _multi_tensor_bop2nd(
            [params[i] for i in rest],
            [grads[i] for i in rest],
            [exp_avgs[i] for i in rest],
            [exp_avg_sqs[i] for i in rest],
            gamma=gamma,
            sigma=sigma,
            threshold=threshold,
            eps=eps,
            tie_break=tie_break,
            unbiased=unbiased,
        )
        for j, i in enumerate(rest):
            flips[i] = out[j]
    return flips


def _probe_fused_bop2nd(device_type: str, w_dtype, g_dtype, m_dtype, *, unbiased: bool = False) -> None:
    """Compile the kernel for this device and these dtypes on a sample; raise unless it matches the reference."""
    gen = torch.Generator().manual_seed(0)
    n = _fused.PROBE_SIZE
    device = torch.device(device_type)

    def sample(scale_low: float, scale_high: float) -> Tensor:
        scale = 10.0 ** (torch.rand(n, generator=gen, dtype=torch.float64) * (scale_high - scale_low) + scale_low)
        return torch.randn(n, generator=gen, dtype=torch.float64) * scale

    w = (torch.randint(0, 2, (n,), generator=gen) * 2 - 1).to(device=device, dtype=w_dtype)
    m = sample(-4, 0).to(device=device, dtype=m_dtype)
    v = sample(-4, 0).square().to(device=device, dtype=m_dtype)
    g = sample(-3, 1).to(device=device, dtype=g_dtype)
    state = [w, m, v]
    ref = [t.clone() for t in state]
    kwargs = dict(
        gamma=0.1,
        sigma=0.05,
        threshold=0.3 * (math.sqrt(0.05) / 0.1 if unbiased else 1.0),
        eps=1e-7,
        tie_break="larq",
        unbiased=unbiased,
    )
    ref_flips = _single_tensor_bop2nd([ref[0]], [g], [ref[1]], [ref[2]], **kwargs)
    flips = _fused_bop2nd([w], [g], [m], [v], **kwargs)
    if not (all(torch.equal(a, b) for a, b in zip(state, ref)) and int(flips[0]) == int(ref_flips[0]) > 0):
        raise RuntimeError("the compiled kernel's results differ from the reference implementation's")
