r"""The rate schedules of ``TrainConfig.decay_schedule``: picklable functions of the epoch or of the step.

=============  ===========================================  ==========================================================
schedule       what moves, and when                         value
=============  ===========================================  ==========================================================
``"step"``     gamma (latent mode: lr), once per epoch      ``rate * gamma_decay ** (epoch // gamma_decay_every)``
``"linear"``   gamma (latent mode: lr), once per epoch      ``rate * (1 - epoch / epochs)`` (ReActNet, AdamBNN)
``"interpolate"``  every rate with an ``*_end``, every step  ``(start - end) * (1 - step / total) + end``
=============  ===========================================  ==========================================================

:class:`StepDecay` and :class:`LinearDecay` are factors for ``torch.optim.lr_scheduler.LambdaLR``.
:class:`LinearInterpolation` is a value: the ``"interpolate"`` schedule sets gamma, tau, sigma and Adam's lr to it
before every optimizer step, from the number of steps done (:class:`~torchbop.training.module.BinaryClassifier`),
as the Bop2ndOrder authors' CIFAR-10 recipe does with Keras' ``PolynomialDecay(start, decay_steps, end, power=1.0)``
evaluated at the optimizer's ``iterations`` (CuauSuarez/Bop2ndOrder, ``bnn_optimization/models/binarynet_batch.py``,
hyperparameters ``bop2ndOrder_CIFAR``; ``_get_decayed_hyper`` in ``bnn_optimization/optimizers.py``; Suarez-Ramirez
et al., "A Bop and Beyond", arXiv:2104.05124). Being a function of the step count alone, it needs no state of its own:
a resumed run recomputes it from the restored step counter.
"""

from __future__ import annotations

__all__ = ["StepDecay", "LinearDecay", "LinearInterpolation"]


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
