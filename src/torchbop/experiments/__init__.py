"""The paper's evidence, one command per experiment, beside the published numbers.

==================  =========================================================  ==================================
command             reproduces                                                 module
==================  =========================================================  ==================================
approximation       report Table 1: latent weights are not an approximation    :mod:`~.approximation`
arbitrary-lr        report Figure 1 and an exact check of the paper's Thm. 1   :mod:`~.arbitrary_lr`
hyperparameters     paper Figure 2: Bop's gamma and tau                        :mod:`~.hyperparameters`
cifar10             paper Figure 3 / 5.2: BinaryNet on CIFAR-10 with Bop       :mod:`~.cifar10`
==================  =========================================================  ==================================

Usage::

    torchbop experiment approximation --profile quick --jobs 2
    torchbop experiment cifar10 --profile paper --set protocol=reproduction
    torchbop report --profile quick            # -> reports/quick/REPORT.md + figures

Each experiment is one module that owns everything about itself (:class:`~.spec.Experiment`: settings, plan,
execution, summary, figure, verdicts, report section), listed in :data:`~.registry.EXPERIMENTS`. It runs at a named
scale (``paper``, ``quick``, ``smoke``) with single settings changed from the command line; :mod:`~.runner` plans its
independent runs, skips those whose results exist (keyed by a hash of their full configuration), runs the others in
parallel processes and stores each with its configuration under ``results/<profile>/<experiment>/``.
:mod:`~.report` reads those results and never trains.

Example:
    >>> from torchbop.experiments import configure
    >>> configure("paper", "approximation").seeds
    10
"""

from torchbop.experiments.profiles import PROFILES
from torchbop.experiments.registry import EXPERIMENTS
from torchbop.experiments.runner import configure, run_experiment

__all__ = ["EXPERIMENTS", "PROFILES", "configure", "run_experiment"]
