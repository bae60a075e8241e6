r"""Bop, the latent-weight-free optimizer for binarized neural networks.

Helwegen et al., "Latent Weights Do Not Exist: Rethinking Binarized Neural Network Optimization", NeurIPS 2019
(arXiv:1906.02107). Bop keeps one real number per binary weight, an exponential moving average ``m`` of the gradient,
and flips a weight when that average is strong enough and points the same way as the weight (the gradient descends
towards ``-w``).

The layout follows ``torch.optim``: the :class:`Bop` class validates arguments and gathers tensors; the functional
:func:`bop` dispatches to ``_single_tensor_bop`` (the readable reference, the specification), ``_fused_bop`` (one
``torch.compile``-generated loop per tensor, eight tensors per call, the default wherever it compiles) or
``_multi_tensor_bop`` (the eager path: plain PyTorch operations, in cache-sized chunks on CPU). All three are tested
bit-identical.
"""

from __future__ import annotations

import functools
import math
import weakref
from typing import Any, Callable

import torch
from torch import Tensor
from torch.optim import Optimizer

from torchbop.optim import _fused
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

    .. note::
        **Speed: three implementations, one result.** A step is memory-bound; what matters is how often it reads
        and writes each weight's numbers. With the defaults (``fused=None``, ``foreach=None``) Bop chooses:

        * the **fused kernel**, one ``torch.compile``-generated loop per tensor that reads w, g and m once and
          writes m and w, counting flips on the way, eight tensors per call (BinaryNet's step is two calls): on
          CUDA, and on CPU where ``torch.compile`` can build a kernel.
          Whether it can is decided once per process (and device type and dtypes): the kernel is compiled on a
          sample and compared bit for bit with the reference. It is compiled once per process, however gamma or
          tau are scheduled, groups added or tensor sizes changed: shapes are dynamic and hyperparameters are
          tensor arguments. At most two compilations per device, dtype combination and thread count: one for
          ``nonfinite="raise"`` and ``"skip"``, one for ``"mask"`` (Bop2ndOrder adds its own). On CPU, tensors
          under 4096 entries take the eager path, where a compiled call costs more than it saves, unless a call
          made for larger tensors has a slot free for them; the first step that compiles takes seconds.
        * the **eager path** where no kernel can be built (no C++ compiler, no Triton, ``torch.compile`` disabled),
          after one warning: plain PyTorch operations, float arithmetic only, in chunks that stay in the cache.
          ``fused=False`` chooses it explicitly (no warning); so does ``foreach=True``.

        ``nonfinite="raise"`` and ``"skip"`` add one read of the gradients before the step (a sum per tensor: a
        finite sum proves a finite gradient); ``"mask"`` checks inside the kernel. Inside a ``torch.compile``-d
        training step the automatic choice is the plain reference operations, which that compiler fuses.

    Args:
        params: iterable of binary parameters (values exactly -1/+1, checked when added: ``ValueError`` naming the
            parameter otherwise, as for an empty list), or dicts defining parameter groups; named parameters
            (``model.named_parameters()``) make error messages name the offending tensor.
            :func:`torchbop.optim.bop_optimizer` builds Bop and an optimizer for the rest from a model.
        gamma: adaptivity rate, in (0, 1]. Default 1e-4 (Larq).
        threshold: flip threshold tau >= 0. Default 1e-8 (Larq).
        tie_break: what happens when ``w * m == tau`` exactly: ``"larq"`` | ``"keep"`` | ``"flip"``.
        m_init: ``"zero"`` (Larq, original code) or ``"grad"`` (the PyTorch reproduction).
        nonfinite: ``"raise"``, ``"skip"`` or ``"mask"`` for a gradient that holds inf or NaN.
        foreach: ``True`` forces the eager path (as ``fused=False``), ``False`` the single-tensor reference.
        fused: ``None`` (default) chooses automatically, ``True`` forces the compiled kernel, ``False`` the eager
            path (see the note on speed).

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
            lr=gamma,
            threshold=threshold,
            tie_break=tie_break,
            m_init=m_init,
            nonfinite=nonfinite,
            foreach=foreach,
            fused=fused,
        )
        if not isinstance(params, (Tensor, dict)):
            params = list(params)
            if not params:
                raise ValueError(
                    f"{type(self).__name__} got an empty parameter list: there are no binary weights to train. A "
                    "real-valued model has none until it is converted with torchbop.binarize(model); "
                    "torchbop.nn.split_binary_params(model) finds the weights of the bop-mode binary layers."
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
        # Refuse a real-valued parameter now, naming it (a read of each tensor, once); step re-checks at first use.
        try:
            for p in group["params"]:
                check_binary(p, lambda p=p: param_label(self, p), error=ValueError)
        except ValueError:
            self.param_groups.pop()  # the refused group is not kept
            raise

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
            # the first gradient; its non-finite entries (kept or skipped by nonfinite="mask"/"skip") start at 0
            grad = p.grad.detach().to(m_dtype, copy=True)
            state["exp_avg"] = grad.masked_fill_(~torch.isfinite(grad), 0.0)
        else:
            state["exp_avg"] = torch.zeros_like(p, dtype=m_dtype, memory_format=torch.preserve_format)

    def _update_group(
        self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor], states: list[dict]
    ) -> list[Tensor]:
        mask = group["nonfinite"] == "mask"
        flips, masked = bop(
            params,
            grads,
            [s["exp_avg"] for s in states],
            gamma=group["lr"],
            threshold=group["threshold"],
            tie_break=group["tie_break"],
            mask_nonfinite=mask,
            foreach=group["foreach"],
            fused=group["fused"],
        )
        if mask:
            torch._foreach_add_([state["nonfinite_entries"] for state in states], masked)
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
        return [
            g for group, (_, grads) in zip(self.param_groups, gathered) if group["nonfinite"] == "raise" for g in grads
        ]

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
            torch._foreach_add_([state["step"] for state in states], 1)  # one call, not one per tensor
            for state, n in zip(states, flips):
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
    entry by entry. The gradients are read last to first: the update, which goes first to last, then finds the
    first ones still in the CPU's cache (measured on BinaryNet's weights: 0-8% off the step).
    """
    sums = [g.sum(dtype=torch.float32) for g in reversed(grads)]
    sums = torch.stack(sums if all(x.device == device for x in sums) else [x.to(device) for x in sums])
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
    rule and for how ``fused`` and ``foreach`` choose the implementation; all of them give bit-identical results.
    """
    keys = {
        (p.device.type, p.dtype, g.dtype, m.dtype)
        for p, g, m in zip(params, grads, exp_avgs)
        if _fused.worth_compiling(p, fused)
    }
    kernel = "bop_masked" if mask_nonfinite else "bop"
    probe = functools.partial(_probe_fused_bop, mask_nonfinite=mask_nonfinite)
    if _fused.choose("Bop", kernel, keys, probe, fused=fused, foreach=foreach):
        impl = functools.partial(_fused_bop, fused=fused)
    elif foreach is False or _fused.is_compiling():  # inside a compiled step, the plain ops trace best
        impl = _single_tensor_bop
    else:
        impl = _multi_tensor_bop
    return impl(
        params, grads, exp_avgs, gamma=gamma, threshold=threshold, tie_break=tie_break, mask_nonfinite=mask_nonfinite
    )


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


@functools.lru_cache(maxsize=64)
def flip_thresholds(threshold: float, tie_break: str, dtype: torch.dtype) -> tuple[float, float]:
    """The numbers that ``w * m`` must exceed, strictly, for a weight -1 and a weight +1 to flip (in ``dtype``).

    tau where the tie rule keeps the weight at ``w * m == tau``, else the float just below tau: ``larq`` gives
    (below, tau), ``keep`` (tau, tau), ``flip`` (below, below). One comparison, exact, NaN never flipping.
    """
    tau = torch.tensor(float(threshold), dtype=dtype)
    below = torch.nextafter(tau, torch.tensor(-math.inf, dtype=dtype))
    tie_neg, tie_pos = _TIE_FLIPS[tie_break]
    return (below if tie_neg else tau).item(), (below if tie_pos else tau).item()


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


# -- the eager fast path ----------------------------------------------------------------------------------------------
# Entries per chunk and thread on CPU (at most four threads' worth). A chunk's two temporaries stay in the cache across
# the few operations of its step, so the step moves about as many bytes through memory as the fused kernel does, and
# each operation still splits into large pieces for the threads; on GPUs each tensor is one chunk.
EAGER_CHUNK = 1 << 18
# Below this many entries a tensor takes the reference's few whole-tensor operations: fewer calls than chunking.
EAGER_MIN_ENTRIES = 1 << 15


def eager_chunks(device: torch.device, sizes: list[int]) -> int:
    """The chunk length for tensors of ``sizes`` on ``device``: the largest, capped on CPU (:data:`EAGER_CHUNK`)."""
    largest = max(sizes, default=0)
    if device.type != "cpu":
        return largest
    return min(largest, EAGER_CHUNK * min(torch.get_num_threads(), 4))


def larq_bounds(threshold: float, w_dtype: torch.dtype, dtype: torch.dtype) -> tuple[float, float] | None:
    """For :func:`flip_indicator`: Larq's :func:`flip_thresholds` where ``clamp(w, below, tau)`` computes them weight
    by weight (tau a normal number in (0, 1], w of the signal's dtype: a bf16 w would round the bounds), else None."""
    if w_dtype != dtype or not 2 * torch.finfo(dtype).tiny <= threshold <= 1:
        return None
    return flip_thresholds(threshold, "larq", dtype)


def flip_indicator(
    signal: Tensor, w: Tensor, out: Tensor, threshold: float, tie_break: str, bounds: tuple[float, float] | None
) -> Tensor:
    """Write 1.0 where a weight flips, else 0.0, into ``out`` (same dtype as ``signal``); may overwrite ``signal``.

    ``signal`` is ``w * m`` (Bop) or ``w * m / (sqrt(v) + eps)`` (Bop2ndOrder). Floats, not bools: on CPU, float
    comparisons are vectorized and ``torch.where`` on a bool mask is ten times slower. Exact: NaN never flips, and
    at the tie ``signal == tau`` the rule of ``tie_break`` applies, as in :func:`flip_mask`. ``bounds`` is
    :func:`larq_bounds`, computed once per step.
    """
    if tie_break == "keep":
        return torch.gt(signal, threshold, out=out)
    if tie_break == "flip":
        return torch.ge(signal, threshold, out=out)
    if bounds is not None:
        torch.clamp(w, min=bounds[0], max=bounds[1], out=out)
        return torch.gt(signal, out, out=out)
    torch.ge(signal, threshold, out=out)  # flip at every tie, then undo it where w = +1: out -= [tie] * (1 + w) / 2
    tie = torch.eq(signal, threshold, out=signal)
    out.addcmul_(tie, w, value=-0.5)
    return out.add_(tie, alpha=-0.5)


def count(chunk_counts: list[Tensor]) -> Tensor:
    """The int64 total of per-chunk flip counts, each an exact integer in floating point (a chunk is < 2**24)."""
    if len(chunk_counts) == 1:
        return chunk_counts[0].to(torch.int64)
    return torch.stack(chunk_counts).to(torch.int64).sum()


def _multi_tensor_bop(params, grads, exp_avgs, *, gamma, threshold, tie_break, mask_nonfinite=False):
    """Eager path, bit-identical to the reference, in cache-sized chunks with two scratch buffers per device and dtype.

    Per chunk: ``d = g - m; d *= gamma; m += d`` (the reference's three roundings), ``d = w * m``, the flip indicator
    ``a`` (:func:`flip_indicator`), ``flips += sum(a)``, ``w -= 2 w a``. With ``mask_nonfinite``, a chunk whose
    ``gamma (g - m)`` does not sum to a finite number (an inf/NaN gradient, or an overflowing sum) is done by the
    reference instead, entry by entry.
    """
    flips: list[Tensor] = [None] * len(params)  # type: ignore[list-item]
    masked: list[Tensor] = [None] * len(params)  # type: ignore[list-item]
    threshold = float(threshold)
    small = [i for i, w in enumerate(params) if w.numel() < EAGER_MIN_ENTRIES]
    if small:  # a handful of operations on whole tensors beats chunking them
        out = _single_tensor_bop(
            [params[i] for i in small],
            [grads[i] for i in small],
            [exp_avgs[i] for i in small],
            gamma=gamma,
            threshold=threshold,
            tie_break=tie_break,
            mask_nonfinite=mask_nonfinite,
        )
        for j, i in enumerate(small):
            flips[i], masked[i] = out[0][j], (out[1][j] if mask_nonfinite else None)
        if len(small) == len(params):
            return flips, (masked if mask_nonfinite else None)
        large = [i for i, w in enumerate(params) if w.numel() >= EAGER_MIN_ENTRIES]
        params, grads, exp_avgs = ([x[i] for i in large] for x in (params, grads, exp_avgs))
    else:
        large = list(range(len(params)))
    buckets = Optimizer._group_tensors_by_device_and_dtype([params, grads, exp_avgs], with_indices=True)
    for (device, _), ((w_list, g_list, m_list), indices) in buckets.items():
        chunk = eager_chunks(device, [w.numel() for w in w_list])
        scratch = torch.empty(2, chunk, dtype=m_list[0].dtype, device=device)
        bounds = larq_bounds(threshold, w_list[0].dtype, scratch.dtype) if tie_break == "larq" else None
        for i, w, g, m in zip((large[j] for j in indices), w_list, g_list, m_list):
            flat = _fused.flat_views(w, g, m, alias=False)
            if flat is None or m.dtype != scratch.dtype:  # tiny, huge or oddly laid out: the reference
                out = _single_tensor_bop(
                    [w], [g], [m], gamma=gamma, threshold=threshold, tie_break=tie_break, mask_nonfinite=mask_nonfinite
                )
                flips[i], masked[i] = out[0][0], (out[1][0] if mask_nonfinite else None)
                continue
            counts, bad = [], []
            for wc, gc, mc in zip(*(t.split(chunk) for t in flat)):
                d, a = scratch if wc.numel() == chunk else scratch[:, : wc.numel()]
                torch.sub(gc, mc, out=d)
                d.mul_(gamma)
                if mask_nonfinite and not bool(torch.isfinite(d.sum())):
                    out = _single_tensor_bop(
                        [wc], [gc], [mc], gamma=gamma, threshold=threshold, tie_break=tie_break, mask_nonfinite=True
                    )
                    counts.append(out[0][0].to(a.dtype))
                    bad.append(out[1][0])
                    continue
                mc.add_(d)
                torch.mul(wc, mc, out=d)
                flip = flip_indicator(d, wc, a, threshold, tie_break, bounds)
                counts.append(flip.sum())
                wc.addcmul_(wc, flip, value=-2)
            flips[i] = count(counts)
            if mask_nonfinite:
                masked[i] = torch.stack(bad).sum() if bad else torch.zeros((), dtype=torch.int64, device=device)
    return flips, (masked if mask_nonfinite else None)


# -- the fused path ---------------------------------------------------------------------------------------------------
def _bop_kernel(w: Tensor, g: Tensor, m: Tensor, gamma: Tensor, above_neg: Tensor, above_pos: Tensor) -> Tensor:
    """The whole step for one flattened tensor, as the reference computes it; compiled, it reads w, g and m once and
    writes m and w (five streams), and returns the number of flips. ``above_neg``, ``above_pos``: see
    :func:`flip_thresholds`."""
    new_m = m + (g.to(m.dtype) - m) * gamma
    wf = w.to(m.dtype)
    flip = wf * new_m > torch.where(wf < 0, above_neg, above_pos)
    m.copy_(new_m)
    w.copy_(torch.where(flip, -w, w))
    return flip.sum(dtype=torch.int32).to(torch.int64)  # int32 lanes vectorize; fine below 2**31 entries


def _bop_masked_kernel(
    w: Tensor, g: Tensor, m: Tensor, gamma: Tensor, above_neg: Tensor, above_pos: Tensor
) -> tuple[Tensor, Tensor]:
    """:func:`_bop_kernel` where entries with an inf/NaN gradient keep m and w; returns (flips, such entries).

    Both counts come from one int64 reduction, ``flips + 2**32 * non-finite``: two reductions would split the loop.
    """
    g = g.to(m.dtype)
    new_m = m + (g - m) * gamma
    wf = w.to(m.dtype)
    finite = (g - g) == 0  # isfinite, in the form the CPU code generator vectorizes
    flip = (wf * new_m > torch.where(wf < 0, above_neg, above_pos)) & finite
    m.copy_(torch.where(finite, new_m, m))
    w.copy_(torch.where(flip, -w, w))
    packed = torch.where(finite, flip.to(torch.int64), _PACK).sum()
    return packed % _PACK, packed // _PACK


_PACK = 2**32


def _fused_bop(params, grads, exp_avgs, *, gamma, threshold, tie_break, mask_nonfinite=False, fused=True):
    """The compiled kernel, one call per ``_fused.ARITY`` tensors; a tensor the kernel cannot take (see
    ``flat_views``) or, with ``fused=None``, one too small to be worth a call (unless a call has a slot free for it),
    goes to the eager path. Hyperparameters travel as
    tensors, so that a schedule never triggers a recompilation."""
    kernel = _bop_masked_kernel if mask_nonfinite else _bop_kernel
    outputs, rest = _fused.apply(
        kernel,
        params,
        grads,
        exp_avgs,
        fused=fused,
        hyperparameters=lambda dtype: (gamma, *flip_thresholds(float(threshold), tie_break, dtype)),
    )
    flips = [out[0] if mask_nonfinite and out is not None else out for out in outputs]
    masked = [out[1] if mask_nonfinite and out is not None else None for out in outputs]
    if rest:
        out = _multi_tensor_bop(
            [params[i] for i in rest],
            [grads[i] for i in rest],
            [exp_avgs[i] for i in rest],
            gamma=gamma,
            threshold=threshold,
            tie_break=tie_break,
            mask_nonfinite=mask_nonfinite,
        )
        for j, i in enumerate(rest):
            flips[i], masked[i] = out[0][j], (out[1][j] if mask_nonfinite else None)
    return flips, (masked if mask_nonfinite else None)


def _probe_fused_bop(device_type: str, w_dtype, g_dtype, m_dtype, *, mask_nonfinite: bool) -> None:
    """Compile the kernel for this device and these dtypes on a sample; raise unless it matches the reference."""
    gen = torch.Generator().manual_seed(0)
    n = _fused.PROBE_SIZE
    device = torch.device(device_type)
    w = (torch.randint(0, 2, (n,), generator=gen) * 2 - 1).to(device=device, dtype=w_dtype)
    m = (torch.randn(n, generator=gen, dtype=torch.float64) * 1e-2).to(device=device, dtype=m_dtype)
    scale = 10.0 ** (torch.rand(n, generator=gen, dtype=torch.float64) * 4 - 3)  # 1e-3 .. 10: many roundings
    g = (torch.randn(n, generator=gen, dtype=torch.float64) * scale).to(device=device, dtype=g_dtype)
    if mask_nonfinite:
        g[::97], g[1::89], g[2::83] = math.nan, math.inf, -math.inf
    ref_w, ref_m = w.clone(), m.clone()
    kwargs = dict(gamma=0.1, threshold=1e-3, tie_break="larq", mask_nonfinite=mask_nonfinite)
    ref_flips, ref_masked = _single_tensor_bop([ref_w], [g], [ref_m], **kwargs)
    flips, masked = _fused_bop([w], [g], [m], **kwargs)
    same = torch.equal(w, ref_w) and torch.equal(m, ref_m) and int(flips[0]) == int(ref_flips[0]) > 0
    if mask_nonfinite:
        same = same and int(masked[0]) == int(ref_masked[0])
    if not same:
        raise RuntimeError("the compiled kernel's results differ from the reference implementation's")
