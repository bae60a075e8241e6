"""The experiments, by command name: the one table that lists them.

Adding an experiment is one module following :class:`~torchbop.experiments.spec.Experiment` and one line here; the
runner, the command line, the figures and the report pick it up from this table.

Example:
    >>> list(EXPERIMENTS)
    ['approximation', 'arbitrary-lr', 'hyperparameters', 'cifar10', 'architectures', 'optimizers']
"""

from __future__ import annotations

from torchbop.experiments import approximation, arbitrary_lr, architectures, cifar10, hyperparameters, optimizers
from torchbop.experiments.spec import Experiment

__all__ = ["EXPERIMENTS", "get_experiment"]

#: command name -> experiment module, in the report's order.
EXPERIMENTS: dict[str, Experiment] = {
    "approximation": approximation,
    "arbitrary-lr": arbitrary_lr,
    "hyperparameters": hyperparameters,
    "cifar10": cifar10,
    "architectures": architectures,
    "optimizers": optimizers,
}


def get_experiment(name: str) -> Experiment:
    """The module of experiment ``name``; ``ValueError`` naming the known ones otherwise."""
    if name not in EXPERIMENTS:
        raise ValueError(f"Unknown experiment {name!r} (expected one of {', '.join(EXPERIMENTS)})")
    return EXPERIMENTS[name]
