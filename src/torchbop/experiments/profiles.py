"""The scale of every experiment: one frozen dataclass per experiment, one named profile per scale. Values only.

``paper`` is the scale the paper and the reproducibility report ran at; ``quick`` runs the whole suite of four in
under 15 minutes on a 2-core CPU (small widths, subsets, few epochs and seeds); ``smoke`` is the seconds-long scale of
the tests. A command line changes single fields (``--epochs 3``, ``--set retrain_epochs=2``) on top of a profile;
:func:`torchbop.experiments.runner.configure` does that and rejects unknown fields.

``subset`` and ``test_subset`` keep the first N images of a fixed (seed 0) random permutation of the training and test
sets, the same images for every seed and configuration; ``None`` means the whole set.

Example:
    >>> PROFILES["quick"].approximation.seeds, PROFILES["paper"].approximation.seeds
    (3, 10)
    >>> PROFILES["paper"].cifar10.epochs
    500
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = [
    "ApproximationConfig",
    "ArbitraryLrConfig",
    "HyperparametersConfig",
    "Cifar10Config",
    "Profile",
    "PROFILES",
]


@dataclass(frozen=True)
class ApproximationConfig:
    """Table 1 (report 3.1.1): latent weights + Adam, then binary / real / real-after-BN-retraining test accuracy."""

    datasets: tuple[str, ...] = ("mnist",)  # "mnist" | "fashion-mnist" | "cifar10" (BinaryNet at `width`)
    seeds: int = 10  # random initializations
    epochs: int = 6  # latent-weight training
    retrain_epochs: int = 6  # batch-norm-only retraining with the real latent weights
    batch_size: int = 32  # Keras' default: the report's script passes none to model.fit
    lr: float = 1e-3  # Adam, betas (0.9, 0.999)
    width: float = 1.0  # BinaryNet width multiplier (cifar10 only; the MNIST BNN has no width)
    subset: int | None = None
    test_subset: int | None = None


@dataclass(frozen=True)
class ArbitraryLrConfig:
    """Figure 1 (report 3.1.2) and an exact check of Theorem 1."""

    seeds: int = 1
    epochs: int = 100
    batch_size: int = 32
    subset: int | None = None
    test_subset: int | None = None
    theorem_steps: int = 2000  # optimizer steps of each exact Theorem-1 comparison
    theorem_factor: float = 2.0**-7  # scales the second run's initial latent weights and learning rate
    control_factor: float = 2.0**10  # the control's factor: puts nearly every latent weight past the STE's clip
    theorem_lr: float = 0.01  # SGD, the unscaled run (batch norm keeps it in both runs)


@dataclass(frozen=True)
class HyperparametersConfig:
    """Figure 2 (paper 5.1, report 3.2): Bop's gamma and tau on BinaryNet / CIFAR-10."""

    seeds: int = 1
    epochs: int = 100
    width: float = 1.0
    subset: int | None = None
    test_subset: int | None = None
    gammas: tuple[float, ...] = (1e-2, 1e-3, 1e-4)  # varied at tau = fixed_threshold
    thresholds: tuple[float, ...] = (0.0, 1e-5, 1e-6)  # varied at gamma = fixed_gamma
    fixed_gamma: float = 1e-3
    fixed_threshold: float = 1e-6
    smooth_std: float = 100.0  # std, in steps, of the Gaussian filter applied to per-step curves


@dataclass(frozen=True)
class Cifar10Config:
    """Figure 3 (paper 5.2, report 3.3): the full BinaryNet / Bop recipe on CIFAR-10."""

    protocol: str = "original"  # "original" (recipe cifar10) | "reproduction" (recipe cifar10_reproduction)
    seeds: int = 1
    epochs: int = 500
    width: float = 1.0
    subset: int | None = None
    test_subset: int | None = None
    gamma_decay_every: int | None = None  # epochs between x0.1 decays of gamma; None: the recipe's (100)


@dataclass(frozen=True)
class Profile:
    """One named scale for all four experiments."""

    description: str
    approximation: ApproximationConfig = field(default_factory=ApproximationConfig)
    arbitrary_lr: ArbitraryLrConfig = field(default_factory=ArbitraryLrConfig)
    hyperparameters: HyperparametersConfig = field(default_factory=HyperparametersConfig)
    cifar10: Cifar10Config = field(default_factory=Cifar10Config)


PROFILES: dict[str, Profile] = {
    "paper": Profile(description="the published scale (paper and reproducibility report)"),
    "quick": Profile(
        description="the whole suite in under 15 minutes on a 2-core CPU: subsets, 1/8 width, 2-4 epochs, 1-3 seeds",
        approximation=ApproximationConfig(datasets=("mnist", "fashion-mnist", "cifar10"), seeds=3, epochs=2,
                                          retrain_epochs=2, width=0.125, subset=6000, test_subset=5000),
        arbitrary_lr=ArbitraryLrConfig(seeds=2, epochs=3, subset=6000, test_subset=5000, theorem_steps=300),
        hyperparameters=HyperparametersConfig(epochs=4, width=0.125, subset=5000, test_subset=2000, smooth_std=10.0),
        cifar10=Cifar10Config(epochs=4, width=0.125, subset=5000, test_subset=2000, gamma_decay_every=2),
    ),
    "smoke": Profile(
        description="seconds per experiment, for tests: tiny subsets, 1/16 width, 1-2 epochs",
        approximation=ApproximationConfig(seeds=2, epochs=1, retrain_epochs=1, subset=256, test_subset=256),
        arbitrary_lr=ArbitraryLrConfig(seeds=1, epochs=1, subset=256, test_subset=256, theorem_steps=12),
        hyperparameters=HyperparametersConfig(epochs=1, width=0.0625, subset=300, test_subset=200, smooth_std=1.0),
        cifar10=Cifar10Config(epochs=2, width=0.0625, subset=200, test_subset=200, gamma_decay_every=1),
    ),
}
