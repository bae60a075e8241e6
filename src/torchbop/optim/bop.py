r"""Bop, the latent-weight-free optimizer for binarized neural networks.

Helwegen et al., "Latent Weights Do Not Exist: Rethinking Binarized Neural Network Optimization", NeurIPS 2019
(arXiv:1906.02107). Bop keeps one real number per binary weight, an exponential moving average ``m`` of the gradient,
and flips a weight when that average is strong enough and points the same way as the weight (the gradient descends
towards ``-w``).

The layout follows ``torch.optim``: the :class:`Bop` class validates arguments and gathers tensors; the functional
:func:`bop` dispatches to ``_single_tensor_bop`` (the readable reference, the specification), ``_multi_tensor_bop``
(``torch._foreach_*``, the default) or ``_fused_bop`` (one ``torch.compile``-generated kernel per tensor). All three are
tested bit-identical.
"""

from __future__ import annotations

import functools
import math
import weakref
from typing import Any, Callable

import torch
from torch import Tensor
from torch.optim import Optimizer

from torchbop.optim._validation import (
    NONFINITE_POLICIES,
    TIE_BREAKS,
    check_binary,
    param_label,
    validate_choice,
    validate_group_choice,
    validate_group_scalar,
    validate_scalar,
)

__all__ = ["Bop", "bop"]


class Bop(Optimizer):
    r"""Binary optimizer (Bop) of Helwegen et al. (2019), flip for flip the rule of Larq's ``Bop``.

    .. math::
        \begin{aligned}
            &\textbf{input}: \gamma \text{ (adaptivity rate, the group's ``lr``)}, \tau \text{ (threshold)},
                w_0 \in \{-1, +1\}^n, \; m_0 = 0 \\
            &\textbf{for } t = 1, 2, \ldots \textbf{ do} \\
            &\quad g_t \leftarrow \nabla_w f_t(w_{t-1}) \\
            &\quad m_t \leftarrow m_{t-1} + \gamma \, (g_t - m_{t-1}) \\
            &\quad w_t \leftarrow -w_{t-1} \textbf{ if } w_{t-1} \, m_t > \tau \textbf{ else } w_{t-1} \\
            &\textbf{return } w_t
        \end{aligned}

    This is eq. (5)-(6) of the paper written as Larq writes it: ``m`` is updated as ``m + gamma * (g - m)`` (the
    original code computes ``(1 - gamma) * m + gamma * g``, equal up to rounding) and a weight flips iff
    ``w * m > tau`` (strict).

    .. note::
        Conventions the paper leaves open, and what torchbop does:

        * **The tie** ``w * m == tau``. Larq computes ``w <- sign(-tf.sign(w * m - tau) * w)`` with ``sign(0) = +1``,
          so at exact equality the weight becomes ``+1`` (a ``-1`` flips, a ``+1`` stays). This is the default,
          ``tie_break="larq"``, so that trajectories match Larq's flip for flip; with ``tau = 0`` it also turns every
          ``-1`` weight whose ``m`` is exactly zero into ``+1``. ``tie_break="keep"`` never flips at the tie (a
          strict reading of ``w * m > tau``); ``tie_break="flip"`` always flips there (eq. 6, ``|m| >= tau``).
        * **m_0.** ``m`` starts at zero (Larq and the original code). The PyTorch reproduction started it at the
          first gradient: ``m_init="grad"``.
        * **gamma is the group's ``lr``.** ``Bop(params, gamma=...)`` stores gamma under ``param_group["lr"]`` and
          reads it from there, so every ``torch.optim.lr_scheduler`` schedules it: ``StepLR(opt, 100, 0.1)`` stepped
          per epoch decays gamma x0.1 every 100 epochs, as in the paper's CIFAR-10 recipe. The threshold is
          scheduled with :class:`torchbop.optim.ThresholdScheduler`.
        * **Non-finite gradients never reach m.** Before any state changes, each step checks the gradients.
          ``nonfinite="raise"`` (default) raises ``RuntimeError`` naming the parameter, with ``m`` and the weights
          untouched; ``nonfinite="skip"`` leaves that parameter's ``m`` and weights as they are for this step and
          counts it in ``state["nonfinite_steps"]`` (useful with fp16 loss scaling, which skips such steps anyway);
          ``nonfinite="mask"`` checks nothing beforehand and works entry by entry instead: an entry whose gradient
          is inf/NaN keeps its ``m`` and its weight, the others are updated, and ``state[p]["nonfinite_entries"]``
          counts the masked entries. The check then costs no pass of its own (the fused kernel does it on the way),
          which is why the benchmark reports both.
        * **Every step checks before it changes anything.** Each group's gamma (``lr``) must be in [0, 1] and its
          threshold in [0, inf], whoever set them (a scheduler, an assignment): NaN, gamma > 1, gamma < 0 or a
          negative threshold raise ``ValueError`` naming the group, the key and the value, and the step changes
          nothing (all groups are checked before any tensor is touched; the check is a few comparisons of Python
          numbers per group, no tensor read). gamma = 0, where a schedule decays to zero, is valid at a step
          (``m`` stays as it is), though refused as an argument, where it can only be a mistake.
          :meth:`check_step` runs every check of a step without stepping.
        * **Flips are reported.** After each step ``state[p]["flips"]`` holds the number of weights of ``p`` that
          changed sign (a 0-dim int64 tensor), so flip metrics need no second pass over the weights.

    Args:
        params: iterable of binary parameters (values exactly -1/+1), or dicts defining parameter groups; named
            parameters (``model.named_parameters()``) make error messages name the offending tensor.
        gamma: adaptivity rate, in (0, 1]. Default 1e-4 (Larq).
        threshold: flip threshold tau >= 0. Default 1e-8 (Larq).
        tie_break: what happens when ``w * m == tau`` exactly: ``"larq"`` | ``"keep"`` | ``"flip"``.
        m_init: ``"zero"`` (Larq, original code) or ``"grad"`` (the PyTorch reproduction).
        nonfinite: ``"raise"``, ``"skip"`` or ``"mask"`` for a gradient that holds inf or NaN.
        foreach: use the ``torch._foreach_*`` implementation (default when ``fused`` is not set).
        fused: use one compiled kernel per tensor (``torch.compile``; the first step compiles, which takes seconds).

    Example:
        >>> w = torch.nn.Parameter(torch.tensor([1.0, -1.0, 1.0]))
        >>> opt = Bop([w], gamma=0.5, threshold=0.1)
        >>> w.grad = torch.tensor([1.0, 1.0, -1.0])  # m becomes [0.5, 0.5, -0.5]
        >>> opt.step()
        >>> w.data  # w*m = [0.5, -0.5, -0.5]: only the first weight flips
        tensor([-1., -1.,  1.])
        >>> int(opt.state[w]["flips"])
        1
    """

    # Checked in every group at every step: (name, group key, low, high, low inclusive); high is inclusive.
    _STEP_CHECKS: tuple[tuple[str, str, float, float, bool], ...] = (
        ("gamma", "lr", 0.0, 1.0, True),
        ("threshold", "threshold", 0.0, math.inf, True),
    )
    _NONFINITE_POLICIES: tuple[str, ...] = NONFINITE_POLICIES
    # State entries that must have their parameter's shape (checked by load_state_dict).
    _PARAM_SHAPED_STATE: tuple[str, ...] = ("exp_avg",)

    def __init__(
        self,
        params: Any,
        gamma: float = 1e-4,
        threshold: float = 1e-8,
        *,
        tie_break: str = "larq",
        m_init: str = "zero",
        nonfinite: str = "raise",
        foreach: bool | None = None,
        fused: bool | None = None,
    ) -> None:
        validate_scalar("gamma", gamma, low=0.0, high=1.0, low_inclusive=False)
        validate_scalar("threshold", threshold, low=0.0)
        validate_choice("tie_break", tie_break, TIE_BREAKS)
        validate_choice("m_init", m_init, ("zero", "grad"))
        validate_choice("nonfinite", nonfinite, NONFINITE_POLICIES)
        if foreach and fused:
            raise RuntimeError("`fused` and `foreach` cannot be `True` together.")
        defaults = dict(
            lr=gamma, threshold=threshold, tie_break=tie_break, m_init=m_init, nonfinite=nonfinite,
            foreach=foreach, fused=fused,
        )
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        # Accept `gamma` in a group dict as the documented name of `lr`, and validate per-group overrides.
        if "gamma" in param_group:
            if "lr" in param_group:
                raise ValueError("Give a Bop param group `gamma` or `lr` (its alias), not both.")
            param_group = {**param_group, "lr": param_group.pop("gamma")}
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        validate_scalar("gamma", group["lr"], low=0.0, high=1.0, low_inclusive=False)
        validate_scalar("threshold", group["threshold"], low=0.0)
        validate_choice("tie_break", group["tie_break"], TIE_BREAKS)

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        for group in self.param_groups:
            group.setdefault("tie_break", "larq")
            group.setdefault("m_init", "zero")
            group.setdefault("nonfinite", "raise")
            group.setdefault("foreach", None)
            group.setdefault("fused", None)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state dict, keeping every state tensor's saved dtype.

        ``torch.optim.Optimizer.load_state_dict`` casts all state but ``step`` to the parameter's dtype; Bop's ``m``
        must stay fp32 beside a bf16 parameter, and its counters stay int64.

        Raises:
            ValueError: a state tensor that must have its parameter's shape (``exp_avg``; also ``exp_avg_sq`` in
                :class:`~torchbop.optim.Bop2ndOrder`) has another shape: the state dict belongs to another model.
                Nothing is loaded; the optimizer keeps its state and its groups.
        """
        id_map = self._saved_id_map(state_dict)
        self._check_state_shapes(state_dict, id_map)
        saved = state_dict["state"]
        super().load_state_dict(state_dict)
        for index, values in saved.items():
            if index not in id_map:
                continue
            state = self.state[id_map[index]]
            for key, value in values.items():
                if isinstance(value, Tensor) and state[key].dtype != value.dtype:
                    state[key] = value.detach().to(device=state[key].device, copy=True)

    def _saved_id_map(self, state_dict: dict[str, Any]) -> dict[Any, Tensor]:
        """The saved parameter ids mapped to this optimizer's parameters, in order, as ``Optimizer`` maps them."""
        saved_groups = state_dict.get("param_groups", [])
        if len(saved_groups) != len(self.param_groups):
            return {}  # Optimizer.load_state_dict raises its own error, before changing anything
        id_map: dict[Any, Tensor] = {}
        for saved, group in zip(saved_groups, self.param_groups):
            if len(saved["params"]) != len(group["params"]):
                return {}
            id_map.update(zip(saved["params"], group["params"]))
        return id_map

    def check_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Raise the ``ValueError`` that :meth:`load_state_dict` would raise for a state tensor of the wrong shape.

        Changes nothing; :class:`~torchbop.optim.CompositeOptimizer` calls it on every child before loading any.
        """
        self._check_state_shapes(state_dict, self._saved_id_map(state_dict))

    def _check_state_shapes(self, state_dict: dict[str, Any], id_map: dict[Any, Tensor]) -> None:
        for index, values in state_dict["state"].items():
            p = id_map.get(index)
            if p is None:
                continue
            for key in self._PARAM_SHAPED_STATE:
                value = values.get(key)
                if isinstance(value, Tensor) and value.shape != p.shape:
                    raise ValueError(
                        f"Cannot load this {type(self).__name__} state dict: its state[{key!r}] for "
                        f"{param_label(self, p)} has shape {tuple(value.shape)}, but that parameter has shape "
                        f"{tuple(p.shape)}. The state dict was saved for another model (or with the parameters in "
                        "another order); load the checkpoint of this model, or build the optimizer over the same "
                        "parameters, in the same order, as the one saved. Nothing was loaded."
                    )

    def _init_state(self, p: Tensor, group: dict[str, Any], state: dict[str, Any]) -> None:
        """Lazy state initialization, at the first step that sees a gradient for ``p`` (already checked binary)."""
        state["step"] = torch.tensor(0, dtype=torch.int64)
        state["flips"] = torch.zeros((), dtype=torch.int64, device=p.device)
        state["nonfinite_steps"] = torch.tensor(0, dtype=torch.int64)
        state["nonfinite_entries"] = torch.zeros((), dtype=torch.int64, device=p.device)
        # m lives in fp32 (or wider) whatever the parameter's dtype, so bf16 training keeps Bop's state in fp32
        m_dtype = torch.promote_types(p.dtype, torch.float32)
        if group["m_init"] == "grad":
            state["exp_avg"] = p.grad.detach().to(m_dtype, copy=True)
        else:
            state["exp_avg"] = torch.zeros_like(p, dtype=m_dtype, memory_format=torch.preserve_format)

    def _update_group(self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor],
                      states: list[dict]) -> list[Tensor]:
        mask = group["nonfinite"] == "mask"
        flips, masked = bop(
            params, grads, [s["exp_avg"] for s in states],
            gamma=group["lr"], threshold=group["threshold"], tie_break=group["tie_break"],
            mask_nonfinite=mask, foreach=group["foreach"], fused=group["fused"],
        )
        if mask:
            for state, n in zip(states, masked):
                state["nonfinite_entries"] += n
        return flips

    # -- checks: everything a step can refuse, before any tensor changes ---------------------------------------------
    def _check_hyperparameters(self) -> None:
        """Every group's hyperparameters, as Python numbers: a few comparisons per group, no tensor read."""
        for index, group in enumerate(self.param_groups):
            for name, key, low, high, low_inclusive in self._STEP_CHECKS:
                validate_group_scalar(index, name, key, group[key], low=low, high=high, low_inclusive=low_inclusive)
            validate_group_choice(index, "tie_break", group["tie_break"], TIE_BREAKS)
            validate_group_choice(index, "nonfinite", group["nonfinite"], self._NONFINITE_POLICIES)

    def _gather(self) -> list[tuple[list[Tensor], list[Tensor]]]:
        """Each group's parameters that have a gradient, with their gradients; creates no state, reads no tensor."""
        gathered = []
        for group in self.param_groups:
            params, grads = [], []
            for p in group["params"]:
                grad = p.grad
                if grad is None:
                    continue
                if grad.is_sparse:
                    raise RuntimeError(
                        f"{type(self).__name__} does not support sparse gradients, but {param_label(self, p)} has "
                        "one; give that parameter to another optimizer (torch.optim.SparseAdam)."
                    )
                params.append(p)
                grads.append(grad)
            gathered.append((params, grads))
        return gathered

    def _check(self, gathered: list[tuple[list[Tensor], list[Tensor]]], *, gradients: bool) -> None:
        self._check_hyperparameters()
        for params, _ in gathered:
            for p in params:
                if not self.state.get(p):  # its first step: the weights must be binary
                    check_binary(p, lambda p=p: param_label(self, p))
        if gradients:
            for group, (params, grads) in zip(self.param_groups, gathered):
                if params and group["nonfinite"] == "raise":
                    _raise_if_nonfinite(self, params, grads)

    def _raise_policy_grads(self, gathered: list[tuple[list[Tensor], list[Tensor]]]) -> list[Tensor]:
        return [g for group, (_, grads) in zip(self.param_groups, gathered) if group["nonfinite"] == "raise"
                for g in grads]

    @torch.no_grad()
    def check_step(self) -> None:
        """Raise now any error that :meth:`step` would raise with the current gradients; change nothing.

        Checks every group's hyperparameters (:meth:`step` does so too, at no measurable cost), sparse gradients,
        binary weights (at a parameter's first step) and, for ``nonfinite="raise"`` groups, the gradients (one
        read of each). :class:`~torchbop.optim.CompositeOptimizer` calls it on every child before stepping any, so
        that a refused step leaves every child untouched. The next :meth:`step` does not read the gradients again
        when they are the same tensors, unmodified since (same version counters); otherwise it checks them anew.
        """
        self.__dict__.pop("_checked_grads", None)
        gathered = self._gather()
        self._check(gathered, gradients=True)
        token = []
        for grad in self._raise_policy_grads(gathered):
            version = _version_of(grad)
            if version is None:
                return
            token.append((weakref.ref(grad), version))
        self._checked_grads = token

    def _grads_prechecked(self, gathered: list[tuple[list[Tensor], list[Tensor]]]) -> bool:
        """Whether :meth:`check_step` has already checked exactly these gradients (and forget that it did)."""
        token = self.__dict__.pop("_checked_grads", None)
        if token is None:
            return False
        grads = self._raise_policy_grads(gathered)
        return len(grads) == len(token) and all(
            ref() is grad and version == _version_of(grad) for (ref, version), grad in zip(token, grads)
        )

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        """Perform one optimization step. ``closure`` re-evaluates the model and returns the loss.

        Every check (hyperparameters of every group, gradients, binary weights) runs before any tensor changes: a
        refused step raises with all weights and all state as they were.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        gathered = self._gather()
        self._check(gathered, gradients=not self._grads_prechecked(gathered))
        for group, (params, grads) in zip(self.param_groups, gathered):
            if not params:
                continue
            states = []
            for p in params:
                state = self.state[p]
                if len(state) == 0:
                    self._init_state(p, group, state)
                states.append(state)
            if group["nonfinite"] == "skip":
                params, grads, states = _skip_nonfinite(params, grads, states)
                if not params:
                    continue
            flips = self._update_group(group, params, grads, states)
            for state, n in zip(states, flips):
                state["step"] += 1
                state["flips"] = n
        return loss


def _version_of(tensor: Tensor) -> int | None:
    try:
        return tensor._version
    except RuntimeError:  # inference tensors have no version counter
        return None


def _nonfinite_entries(grads: list[Tensor], device: torch.device) -> list[bool] | None:
    """``None`` if every gradient is finite, else which gradients are (``True``) and which hold inf/NaN.

    A finite sum proves a finite gradient, so the common case costs one summing pass and a single host sync for the
    whole group; only a non-finite sum (an inf/NaN entry, or an overflowing sum of huge entries) is looked at
    entry by entry.
    """
    sums = torch.stack([g.sum(dtype=torch.float32).to(device) for g in grads])
    if bool(torch.isfinite(sums).all()):
        return None
    finite = [bool(torch.isfinite(g).all()) for g in grads]
    return None if all(finite) else finite


def _raise_if_nonfinite(optimizer: Optimizer, params: list[Tensor], grads: list[Tensor]) -> None:
    """``nonfinite="raise"``: refuse the step, naming the parameters whose gradient holds inf/NaN."""
    finite = _nonfinite_entries(grads, params[0].device)
    if finite is None:
        return
    bad = [param_label(optimizer, p) for p, ok in zip(params, finite) if not ok]
    raise RuntimeError(
        f"{type(optimizer).__name__} got a non-finite gradient (inf or NaN) for {', '.join(bad)}; no weight or state "
        "was changed. Lower the learning signal, use a GradScaler with fp16, or create the optimizer with "
        "nonfinite='skip'."
    )


def _skip_nonfinite(params: list[Tensor], grads: list[Tensor], states: list[dict]):
    """``nonfinite="skip"``: drop the parameters whose gradient holds inf/NaN, counting the skip in their state."""
    finite = _nonfinite_entries(grads, params[0].device)
    if finite is None:
        return params, grads, states
    for ok, p, state in zip(finite, params, states):
        if not ok:
            state["nonfinite_steps"] += 1
            state["flips"] = torch.zeros((), dtype=torch.int64, device=p.device)
    return tuple([x for ok, x in zip(finite, items) if ok] for items in (params, grads, states))


def bop(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    *,
    gamma: float,
    threshold: float,
    tie_break: str = "larq",
    mask_nonfinite: bool = False,
    foreach: bool | None = None,
    fused: bool | None = None,
) -> tuple[list[Tensor], list[Tensor] | None]:
    """Functional Bop: update ``exp_avgs`` and flip ``params`` in place.

    Returns the flip count of each tensor and, with ``mask_nonfinite=True`` (entries whose gradient is inf/NaN keep
    their ``m`` and weight), the number of such entries of each tensor (else ``None``). See :class:`Bop` for the
    rule. ``fused=True`` selects the compiled kernel, otherwise ``foreach`` (default) or the single-tensor reference
    (``foreach=False``).
    """
    if fused:
        impl = _fused_bop
    elif foreach is False:
        impl = _single_tensor_bop
    else:
        impl = _multi_tensor_bop
    return impl(params, grads, exp_avgs, gamma=gamma, threshold=threshold, tie_break=tie_break,
                mask_nonfinite=mask_nonfinite)


def _single_tensor_bop(params, grads, exp_avgs, *, gamma, threshold, tie_break, mask_nonfinite=False):
    """The reference: one tensor at a time, one line per equation. Never optimize this function."""
    flips, masked = [], []
    for w, g, m in zip(params, grads, exp_avgs):
        # m_t = m_{t-1} + gamma (g_t - m_{t-1}); three separately rounded operations, as Larq computes it
        new_m = m + (g.to(m.dtype) - m) * gamma
        w_times_m = w.to(m.dtype) * new_m  # exact: w is +-1
        new_w = torch.where(w_times_m > threshold, -w, w)
        at_tie = w_times_m == threshold
        if tie_break == "larq":
            new_w = torch.where(at_tie, torch.ones_like(w), new_w)
        elif tie_break == "flip":
            new_w = torch.where(at_tie, -w, new_w)
        if mask_nonfinite:  # an entry with an inf/NaN gradient keeps its m and its weight
            finite = torch.isfinite(g)
            new_m = torch.where(finite, new_m, m)
            new_w = torch.where(finite, new_w, w)
            masked.append(torch.count_nonzero(~finite))
        flips.append((new_w != w).sum())
        m.copy_(new_m)
        w.copy_(new_w)
    return flips, (masked if mask_nonfinite else None)


# At the tie w * m == tau a weight flips iff (w < 0 and TIE[0]) or (w > 0 and TIE[1]).
_TIE_FLIPS = {"larq": (True, False), "keep": (False, False), "flip": (True, True)}


def flip_mask(w: Tensor, w_times_m: Tensor, threshold: float, tie_break: str) -> Tensor:
    """Which weights flip, given ``w * m`` (or the normalized ``w * m / (sqrt(v) + eps)`` of Bop2ndOrder)."""
    flip = w_times_m > threshold
    tie_neg, tie_pos = _TIE_FLIPS[tie_break]
    if tie_neg or tie_pos:
        at_tie = w_times_m == threshold
        if not tie_pos:
            at_tie &= w < 0
        flip |= at_tie
    return flip


def _multi_tensor_bop(params, grads, exp_avgs, *, gamma, threshold, tie_break, mask_nonfinite=False):
    """``torch._foreach_*`` path, grouped by device and dtype; bit-identical to the reference."""
    flips: list[Tensor] = [None] * len(params)  # type: ignore[list-item]
    masked: list[Tensor] = [None] * len(params)  # type: ignore[list-item]
    buckets = Optimizer._group_tensors_by_device_and_dtype([params, grads, exp_avgs], with_indices=True)
    for (w_list, g_list, m_list), indices in buckets.values():
        if g_list[0].dtype != m_list[0].dtype:
            g_list = [g.to(m_list[0].dtype) for g in g_list]
        if mask_nonfinite:
            finite = [torch.isfinite(g) for g in g_list]
            for i, ok in zip(indices, finite):
                masked[i] = torch.count_nonzero(~ok)
            old_m = [m.clone() for m in m_list]
        delta = torch._foreach_sub(g_list, m_list)
        torch._foreach_mul_(delta, gamma)
        torch._foreach_add_(m_list, delta)
        if mask_nonfinite:
            for m, m0, ok in zip(m_list, old_m, finite):
                torch.where(ok, m, m0, out=m)
        # reuse delta's memory for w * m: fresh large allocations cost page faults on every step
        torch._foreach_copy_(delta, w_list)
        torch._foreach_mul_(delta, m_list)
        for j, (i, w, w_times_m) in enumerate(zip(indices, w_list, delta)):
            flip = flip_mask(w, w_times_m, threshold, tie_break)
            if mask_nonfinite:
                flip &= finite[j]
            flips[i] = torch.count_nonzero(flip)
            torch.where(flip, -w, w, out=w)
    return flips, (masked if mask_nonfinite else None)


def _fused_kernel(w: Tensor, g: Tensor, m: Tensor, gamma: Tensor, threshold: Tensor, tie_neg: Tensor,
                  tie_pos: Tensor) -> Tensor:
    """The whole step for one flattened tensor; compiled, it reads w, g, m once and writes m, w (5 streams).

    Entries with a non-finite gradient keep m and w (a no-op where the gradients were screened before). Returns
    ``flips + 2**32 * non-finite entries`` as one int64: a single reduction keeps the kernel one loop.
    """
    g = g.to(m.dtype)
    new_m = m + (g - m) * gamma
    w_times_m = w.to(m.dtype) * new_m
    at_tie = w_times_m == threshold
    finite = (g - g) == 0  # isfinite, in the form the CPU code generator vectorizes
    flip = ((w_times_m > threshold) | (at_tie & (((w < 0) & tie_neg) | ((w > 0) & tie_pos)))) & finite
    m.copy_(torch.where(finite, new_m, m))
    w.copy_(torch.where(flip, -w, w))
    return (flip.to(torch.int64) + (~finite).to(torch.int64) * _PACK).sum()


_PACK = 2**32


@functools.lru_cache(maxsize=None)
def _compiled_kernel() -> Callable:
    # Compiled lazily (first fused step), once: every hyperparameter is a tensor argument, shapes are dynamic.
    return torch.compile(_fused_kernel, dynamic=True)


def _fused_bop(params, grads, exp_avgs, *, gamma, threshold, tie_break, mask_nonfinite=False):
    """One compiled kernel per tensor: reads w, g, m once, writes m and w, and counts the flips on the way."""
    kernel = _compiled_kernel()
    # hyperparameters travel as 0-dim tensors so that a schedule never triggers a recompilation
    scalars: dict[tuple, tuple[Tensor, ...]] = {}
    flips, masked = [], []
    for w, g, m in zip(params, grads, exp_avgs):
        if w.numel() == 0:
            flips.append(torch.zeros((), dtype=torch.int64, device=w.device))
            masked.append(torch.zeros((), dtype=torch.int64, device=w.device))
            continue
        key = (m.device, m.dtype)
        if key not in scalars:
            scalars[key] = (torch.tensor(gamma, dtype=m.dtype, device=m.device),
                            torch.tensor(threshold, dtype=m.dtype, device=m.device),
                            *(torch.tensor(b, device=m.device) for b in _TIE_FLIPS[tie_break]))
        packed = kernel(w.view(-1), g.reshape(-1), m.view(-1), *scalars[key])
        flips.append(packed % _PACK)
        masked.append(packed // _PACK)
    return flips, (masked if mask_nonfinite else None)
