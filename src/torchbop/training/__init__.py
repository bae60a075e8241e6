"""Training engine: Lightning module, data module, callbacks and ``train(config)``.

Everything here imports Lightning; the core (quantizers, nn, optim, metrics) does not.

Example:
    >>> from torchbop.training import load_recipe
    >>> cfg = load_recipe("mnist", ["epochs=1"])
    >>> cfg.optimizer, cfg.epochs
    ('bop', 1)
"""

from torchbop.training.callbacks import AtomicCheckpointIO, FlipEarlyStopping
from torchbop.training.config import TrainConfig, apply_overrides, available_recipes, load_recipe
from torchbop.training.data import BinaryDataModule
from torchbop.training.module import BinaryClassifier
from torchbop.training.train import format_summary, train

__all__ = [
    "AtomicCheckpointIO",
    "BinaryClassifier",
    "BinaryDataModule",
    "FlipEarlyStopping",
    "TrainConfig",
    "apply_overrides",
    "available_recipes",
    "format_summary",
    "load_recipe",
    "train",
]
