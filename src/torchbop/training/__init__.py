"""Training engine: ``train(config)``, one explicit loop on Lightning Fabric (:mod:`torchbop.training.loop`).

Lightning Fabric is imported here (devices, processes, precision); the core (quantizers, nn, optim, metrics) does not.

Example:
    >>> from torchbop.training import load_recipe
    >>> cfg = load_recipe("mnist", ["epochs=1"])
    >>> cfg.optimizer, cfg.epochs
    ('bop', 1)
"""

from torchbop.training.checkpoints import load_model
from torchbop.training.config import TrainConfig, apply_overrides, available_recipes, load_recipe
from torchbop.training.history import History, Observer, WallClockBudget
from torchbop.training.loop import format_summary, train

__all__ = [
    "History",
    "Observer",
    "TrainConfig",
    "WallClockBudget",
    "apply_overrides",
    "available_recipes",
    "format_summary",
    "load_model",
    "load_recipe",
    "train",
]
