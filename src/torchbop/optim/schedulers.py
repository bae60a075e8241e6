r"""Scheduling Bop's threshold.

Bop's gamma is its param groups' ``lr``, so every ``torch.optim.lr_scheduler`` schedules it. The threshold tau has no
such hook in torch; :class:`ThresholdScheduler` is the documented means: a ``LambdaLR`` for tau.
"""

from __future__ import annotations

from typing import Any, Callable

from torch.optim import Optimizer

__all__ = ["ThresholdScheduler"]


class ThresholdScheduler:
    r"""Set each group's threshold to its initial value times ``threshold_lambda(epoch)``.

    .. math::
        \tau_{\text{epoch}} = \tau_0 \cdot \lambda(\text{epoch})

    Works on :class:`~torchbop.optim.Bop`, :class:`~torchbop.optim.Bop2ndOrder` and on a
    :class:`~torchbop.optim.CompositeOptimizer` (groups without a ``threshold``, such as Adam's, are left alone).
    Call :meth:`step` once per epoch (or per step, as you choose), after ``optimizer.step()``, like an LR scheduler.
    ``state_dict`` / ``load_state_dict`` save and restore the epoch counter and the initial thresholds (not the
    lambda, as with ``LambdaLR``).

    Args:
        optimizer: the optimizer whose groups carry a ``"threshold"``.
        threshold_lambda: epoch -> multiplicative factor, or a list with one function per threshold-carrying group.
        last_epoch: index of the last epoch, -1 to start.

    Example:
        >>> import torch
        >>> from torchbop.optim import Bop
        >>> opt = Bop([torch.nn.Parameter(torch.ones(3))], threshold=1e-6)
        >>> sched = ThresholdScheduler(opt, lambda epoch: 0.1 ** (epoch // 10))
        >>> for _ in range(10):
        ...     sched.step()
        >>> opt.param_groups[0]["threshold"]
        1e-07
    """

    def __init__(
        self,
        optimizer: Optimizer,
        threshold_lambda: Callable[[int], float] | list[Callable[[int], float]],
        last_epoch: int = -1,
    ) -> None:
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"{type(optimizer).__name__} is not an Optimizer")
        self.optimizer = optimizer
        groups = self._groups()
        if not groups:
            raise ValueError("ThresholdScheduler: no param group of this optimizer has a 'threshold'.")
        lambdas = threshold_lambda if isinstance(threshold_lambda, (list, tuple)) else [threshold_lambda] * len(groups)
        if len(lambdas) != len(groups):
            raise ValueError(f"Expected {len(groups)} threshold lambdas (one per Bop group), got {len(lambdas)}")
        self.threshold_lambdas = list(lambdas)
        for group in groups:
            group.setdefault("initial_threshold", group["threshold"])
        self.last_epoch = last_epoch
        self.step()

    def _groups(self) -> list[dict[str, Any]]:
        return [group for group in self.optimizer.param_groups if "threshold" in group]

    def step(self) -> None:
        self.last_epoch += 1
        for group, fn in zip(self._groups(), self.threshold_lambdas):
            factor = float(fn(self.last_epoch))
            if not factor >= 0:
                raise ValueError(f"threshold_lambda({self.last_epoch}) = {factor}; the threshold must stay >= 0")
            group["threshold"] = group["initial_threshold"] * factor

    def get_last_threshold(self) -> list[float]:
        return [group["threshold"] for group in self._groups()]

    def state_dict(self) -> dict[str, Any]:
        return {"last_epoch": self.last_epoch, "initial_thresholds": [g["initial_threshold"] for g in self._groups()]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.last_epoch = state_dict["last_epoch"]
        for group, initial in zip(self._groups(), state_dict["initial_thresholds"]):
            group["initial_threshold"] = initial
