r"""Schedules of the optimizers' rates.

Bop's gamma (CEMA's alpha) is its param groups' ``lr``, so every ``torch.optim.lr_scheduler`` schedules it:
:class:`StepDecay` (the paper's staircase) and :class:`LinearDecay` (ReActNet's and AdamBNN's decay to 0) are picklable
factors for ``LambdaLR``. The threshold tau has no such hook in torch; :class:`ThresholdScheduler` is the documented
means: a ``LambdaLR`` for tau. :class:`LinearInterpolation` is the per-step linear schedule of the Bop2ndOrder
authors' recipe (a value, set into the groups before each step: ``torchbop.training.optimizers`` does that for
``decay_schedule: interpolate``; a loop of one's own does the same).
"""

from __future__ import annotations

from typing import Any, Callable

from torch.optim import Optimizer

__all__ = ["LinearDecay", "LinearInterpolation", "StepDecay", "ThresholdScheduler"]


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


class StepDecay:
    """Staircase factor ``factor ** (epoch // every)`` (constant 1 when ``every`` is None); a picklable lr_lambda.

    Example:
        >>> decay = StepDecay(0.1, every=100)
        >>> [decay(e) for e in (0, 99, 100, 199, 200)]
        [1.0, 1.0, 0.1, 0.1, 0.010000000000000002]
    """

    def __init__(self, factor: float = 1.0, every: int | None = None) -> None:
        self.factor = factor
        self.every = every

    def __call__(self, epoch: int) -> float:
        if self.every is None:
            return 1.0
        return self.factor ** (epoch // self.every)


class LinearDecay:
    """Factor ``1 - epoch / epochs``: from 1 at the first epoch down to ``1 / epochs`` at the last; a picklable
    lr_lambda (ReActNet's and AdamBNN's ``LambdaLR(lambda step: 1.0 - step / epochs)``, stepped once per epoch).

    Example:
        >>> decay = LinearDecay(4)
        >>> [decay(e) for e in range(4)]
        [1.0, 0.75, 0.5, 0.25]
    """

    def __init__(self, epochs: int) -> None:
        self.epochs = epochs

    def __call__(self, epoch: int) -> float:
        return max(0.0, 1.0 - epoch / self.epochs)


class LinearInterpolation:
    r"""The value at step ``t`` of a rate that moves linearly from ``start`` (step 0) to ``end`` (step ``total``).

    .. math::
        r(t) = (r_{\text{start}} - r_{\text{end}}) \left(1 - \frac{\min(t, T)}{T}\right) + r_{\text{end}}

    Keras' ``PolynomialDecay`` with ``power=1.0``, in its order of operations (in float64 here; Keras computes in the
    variable's float32). ``t`` counts the optimizer steps done before the step that uses the value, so the first
    step trains at ``start`` and the last of ``T`` steps at ``end + (start - end) / T``; ``end`` is reached only at
    ``t = T`` and held after. ``end`` may be larger than ``start`` (the recipe's sigma rises).

    Args:
        start: the value at step 0.
        end: the value at step ``total_steps`` and after.
        total_steps: ``T > 0``, the steps of the whole run (epochs x batches per epoch).

    Example:
        >>> gamma = LinearInterpolation(1e-2, 1e-5, total_steps=4)
        >>> [round(gamma(t), 8) for t in range(6)]
        [0.01, 0.0075025, 0.005005, 0.0025075, 1e-05, 1e-05]
    """

    def __init__(self, start: float, end: float, total_steps: int) -> None:
        if not isinstance(total_steps, int) or total_steps < 1:
            raise ValueError(f"Invalid total_steps value: {total_steps!r} (expected a positive integer)")
        self.start = float(start)
        self.end = float(end)
        self.total_steps = total_steps

    def __call__(self, step: int) -> float:
        fraction = min(step, self.total_steps) / self.total_steps
        return (self.start - self.end) * (1.0 - fraction) + self.end
