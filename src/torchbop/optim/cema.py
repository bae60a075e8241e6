r"""CEMA: cascaded exponential moving averages, a latent-weight-free optimizer for binary weights.

Quist, Li and van Gemert, "Understanding weight-magnitude hyperparameters in training binary networks", ICLR 2023
(OpenReview uBKBoix9NXa). Read as an optimizer of latent weights, Adam with weight decay on a binary network keeps two
averages per weight: a momentum ``m`` of the gradient and an "inertia" ``I`` (the role of the latent weight) that
averages ``m``; the sign flips where the inertia points the same way as the weight. CEMA keeps exactly those two
averages and nothing else. With ``alpha = 1`` it is Bop with a zero threshold.

The layout follows ``torch.optim`` and :mod:`torchbop.optim.bop`: the :class:`CEMA` class, the functional :func:`cema`,
the reference ``_single_tensor_cema`` and the eager fast path ``_multi_tensor_cema``, tested bit-identical.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from torchbop.optim import _fused
from torchbop.optim._validation import validate_choice, validate_group_choice, validate_group_scalar, validate_scalar
from torchbop.optim.bop import EAGER_MIN_ENTRIES, Bop, count, eager_chunks

__all__ = ["CEMA", "cema"]


class CEMA(Bop):
    r"""CEMA of Quist et al. (2023), flip for flip the authors' ``CEMA_Optimizer``.

    .. math::
        \begin{aligned}
            &\textbf{input}: \alpha \text{ (the group's ``lr``)}, \gamma, \; w_0 \in \{-1, +1\}^n, \; m_0 = I_0 = 0 \\
            &\textbf{for } t = 1, 2, \ldots \textbf{ do} \\
            &\quad g_t \leftarrow \nabla_w f_t(w_{t-1}) \\
            &\quad m_t \leftarrow (1 - \gamma) \, m_{t-1} + \gamma \, g_t \\
            &\quad I_t \leftarrow (1 - \alpha) \, I_{t-1} + \alpha \, m_t \\
            &\quad w_t \leftarrow -w_{t-1} \textbf{ if } w_{t-1} \, I_t > 0 \textbf{ else } w_{t-1} \\
            &\textbf{return } w_t
        \end{aligned}

    .. note::
        What was compared with the authors' code (jorisquist/Understanding-WM-HP-in-BNNs,
        ``optimizers/cema_optimizer.py``), and what torchbop does:

        * **Arithmetic.** Both averages are computed as the authors' code computes them: ``m`` scaled by
          ``1 - gamma``, then ``gamma * g`` added in one ``add_(g, alpha=gamma)``, then the same for ``I`` with
          alpha and the *new* ``m``. That addition is a fused multiply-add on CUDA and on AVX2/AVX-512 CPUs
          (one rounding, not two), here as there. The test feeds recorded gradients through this class and through
          a NumPy transcription of the authors' step and requires the same weights, ``m`` and ``I`` at every step.
        * **The flip** is strict: ``w * I > 0`` (no threshold; ``I == 0`` and NaN never flip).
        * **alpha is the group's ``lr``,** so ``torch.optim.lr_scheduler`` schedules it, as the authors do: their
          group ``lr`` starts at 1.0 and multiplies their ``initial_alpha``, decayed by
          ``LambdaLR(lambda epoch: 1 - epoch / epochs)``. ``LambdaLR`` gives the same alpha, bit for bit, in both
          (``alpha * lambda``); a chained scheduler (``StepLR``, ``ExponentialLR``) multiplies in another order and
          may differ in the last bit of the double. ``gamma`` is the group's ``gamma``, not scheduled.
        * **Binary weights only.** The authors' constructor takes ``sign_()`` of the parameters (which makes a zero
          weight 0); CEMA refuses a parameter that is not exactly -1/+1 at its first step, as Bop does.
        * **The state** lives in fp32 (or wider) whatever the parameter's dtype: ``state["exp_avg"]`` is ``m``,
          ``state["inertia"]`` is ``I``; ``state["flips"]`` counts the sign changes of the last step, as Bop's.
        * **No fused kernel.** ``torch.compile``'s CPU code generator has no fused multiply-add, so a compiled step
          could not reproduce the eager (and authors') rounding; the fast path is eager, chunked to stay in cache.

    Everything else (non-finite gradients: ``nonfinite="raise"`` or ``"skip"``; every group's hyperparameters
    checked before any tensor changes; ``check_step``; state dicts that keep the state's dtype) is as in
    :class:`~torchbop.optim.Bop`. At a step, alpha and gamma must be in [0, 1].

    Args:
        params: binary parameters (values exactly -1/+1), or dicts defining parameter groups (``alpha`` is accepted
            there as the documented name of ``lr``).
        gamma: momentum rate of the gradient average, in (0, 1].
        alpha: rate of the inertia, the average of ``m``, in (0, 1]; stored as the group's ``lr``.
        nonfinite: ``"raise"`` (default) or ``"skip"`` for a gradient that holds inf or NaN.
        foreach: ``None`` (default) or ``True`` for the eager fast path, ``False`` for the single-tensor reference.

    Example:
        >>> w = torch.nn.Parameter(torch.tensor([1.0, -1.0, 1.0]))
        >>> opt = CEMA([w], gamma=0.5, alpha=0.5)
        >>> w.grad = torch.tensor([1.0, 1.0, -1.0])  # m = [0.5, 0.5, -0.5], I = [0.25, 0.25, -0.25]
        >>> opt.step()
        >>> w.data  # w * I = [0.25, -0.25, -0.25]: only the first weight flips
        tensor([-1., -1.,  1.])
        >>> int(opt.state[w]["flips"]), opt.state[w]["inertia"]
        (1, tensor([ 0.2500,  0.2500, -0.2500]))
    """

    _STEP_CHECKS = (
        ("alpha", "lr", 0.0, 1.0, True),
        ("gamma", "gamma", 0.0, 1.0, True),
    )
    _NONFINITE_POLICIES = ("raise", "skip")
    _PARAM_SHAPED_STATE = ("exp_avg", "inertia")

    def __init__(
        self,
        params: Any,
        gamma: float,
        alpha: float,
        *,
        nonfinite: str = "raise",
        foreach: bool | None = None,
    ) -> None:
        validate_scalar("gamma", gamma, low=0.0, high=1.0, low_inclusive=False)
        validate_scalar("alpha", alpha, low=0.0, high=1.0, low_inclusive=False)
        validate_choice("nonfinite", nonfinite, self._NONFINITE_POLICIES)
        defaults = dict(lr=alpha, gamma=gamma, nonfinite=nonfinite, foreach=foreach)
        Optimizer.__init__(self, params, defaults)  # Bop's __init__ takes Bop's hyperparameters

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        if "alpha" in param_group:
            if "lr" in param_group:
                raise ValueError("Give a CEMA param group `alpha` or `lr` (its alias), not both.")
            param_group = {**param_group, "lr": param_group.pop("alpha")}
        Optimizer.add_param_group(self, param_group)  # Bop's reads `gamma` as the alias of `lr`
        group = self.param_groups[-1]
        validate_scalar("alpha", group["lr"], low=0.0, high=1.0, low_inclusive=False)
        validate_scalar("gamma", group["gamma"], low=0.0, high=1.0, low_inclusive=False)
        validate_choice("nonfinite", group["nonfinite"], self._NONFINITE_POLICIES)

    def __setstate__(self, state: dict[str, Any]) -> None:
        Optimizer.__setstate__(self, state)
        for group in self.param_groups:
            group.setdefault("nonfinite", "raise")
            group.setdefault("foreach", None)

    def _check_hyperparameters(self) -> None:
        for index, group in enumerate(self.param_groups):
            for name, key, low, high, low_inclusive in self._STEP_CHECKS:
                validate_group_scalar(index, name, key, group[key], low=low, high=high, low_inclusive=low_inclusive)
            validate_group_choice(index, "nonfinite", group["nonfinite"], self._NONFINITE_POLICIES)

    def _init_state(self, p: Tensor, group: dict[str, Any], state: dict[str, Any]) -> None:
        state["step"] = torch.tensor(0, dtype=torch.int64)
        state["flips"] = torch.zeros((), dtype=torch.int64, device=p.device)
        state["nonfinite_steps"] = torch.tensor(0, dtype=torch.int64)
        dtype = torch.promote_types(p.dtype, torch.float32)
        state["exp_avg"] = torch.zeros_like(p, dtype=dtype, memory_format=torch.preserve_format)
        state["inertia"] = torch.zeros_like(p, dtype=dtype, memory_format=torch.preserve_format)

    def _update_group(
        self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor], states: list[dict]
    ) -> list[Tensor]:
        return cema(
            params,
            grads,
            [s["exp_avg"] for s in states],
            [s["inertia"] for s in states],
            gamma=group["gamma"],
            alpha=group["lr"],
            foreach=group["foreach"],
        )


def cema(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    inertias: list[Tensor],
    *,
    gamma: float,
    alpha: float,
    foreach: bool | None = None,
) -> list[Tensor]:
    """Functional CEMA: update ``exp_avgs`` (m) and ``inertias`` (I) and flip ``params`` in place; returns the flip
    count of each tensor (0-dim int64). ``foreach=False`` runs the reference, otherwise the eager fast path (the
    reference's operations inside a ``torch.compile``-d step). See :class:`CEMA`."""
    if foreach is False or _fused.is_compiling():
        impl = _single_tensor_cema
    else:
        impl = _multi_tensor_cema
    return impl(params, grads, exp_avgs, inertias, gamma=gamma, alpha=alpha)


def _single_tensor_cema(params, grads, exp_avgs, inertias, *, gamma, alpha):
    """The reference: one tensor at a time, one line per equation, the authors' operations. Never optimize this."""
    flips = []
    for w, g, m, inertia in zip(params, grads, exp_avgs, inertias):
        m.mul_(1 - gamma).add_(g.to(m.dtype), alpha=gamma)  # m = (1 - gamma) m + gamma g, the sum one FMA
        inertia.mul_(1 - alpha).add_(m, alpha=alpha)  # I = (1 - alpha) I + alpha m
        flip = w.to(inertia.dtype) * inertia > 0
        flips.append(flip.sum())
        w.copy_(torch.where(flip, -w, w))
    return flips


def _multi_tensor_cema(params, grads, exp_avgs, inertias, *, gamma, alpha):
    """Eager path, bit-identical to the reference: the same operations in cache-sized chunks (as Bop's
    ``_multi_tensor_bop``), the flip as a float indicator ``a`` (``w -= 2 w a``), with two scratch buffers."""
    flips: list[Tensor] = [None] * len(params)  # type: ignore[list-item]
    lists = (params, grads, exp_avgs, inertias)
    small = [i for i, w in enumerate(params) if w.numel() < EAGER_MIN_ENTRIES]
    large = [i for i, w in enumerate(params) if w.numel() >= EAGER_MIN_ENTRIES]
    if small:  # a handful of operations on whole tensors beats chunking them
        out = _single_tensor_cema(*([x[i] for i in small] for x in lists), gamma=gamma, alpha=alpha)
        for i, n in zip(small, out):
            flips[i] = n
    if not large:
        return flips
    params, grads, exp_avgs, inertias = ([x[i] for i in large] for x in lists)
    buckets = Optimizer._group_tensors_by_device_and_dtype([params, grads, exp_avgs, inertias], with_indices=True)
    for (device, _), ((w_list, g_list, m_list, i_list), indices) in buckets.items():
        chunk = eager_chunks(device, [w.numel() for w in w_list])
        scratch = torch.empty(2, chunk, dtype=m_list[0].dtype, device=device)
        for i, w, g, m, inertia in zip((large[j] for j in indices), w_list, g_list, m_list, i_list):
            flat = _fused.flat_views(w, g, m, inertia, alias=False)
            if flat is None or m.dtype != scratch.dtype or inertia.dtype != m.dtype:
                flips[i] = _single_tensor_cema([w], [g], [m], [inertia], gamma=gamma, alpha=alpha)[0]
                continue
            counts = []
            for wc, gc, mc, ic in zip(*(t.split(chunk) for t in flat)):
                d, a = scratch if wc.numel() == chunk else scratch[:, : wc.numel()]
                mc.mul_(1 - gamma).add_(gc.to(mc.dtype), alpha=gamma)
                ic.mul_(1 - alpha).add_(mc, alpha=alpha)
                torch.mul(wc, ic, out=d)
                torch.gt(d, 0, out=a)
                counts.append(a.sum())
                wc.addcmul_(wc, a, value=-2)
            flips[i] = count(counts)
    return flips
