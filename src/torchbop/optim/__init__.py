"""Optimizers for binarized networks.

* :class:`Bop` trains binary weights without latent weights (Helwegen et al. 2019), flip for flip Larq's rule;
* :class:`Bop2ndOrder` adds a second-moment normalization (Suarez-Ramirez et al. 2021);
* :class:`CEMA` flips on an average of the gradient's average (Quist et al. 2023), alpha being the groups' ``lr``;
* :class:`CompositeOptimizer` runs Bop beside any torch optimizer (Adam for batch norm) as one ``Optimizer``;
* :func:`bop_optimizer` builds that composite for any binarized model in one call;
* :class:`ThresholdScheduler` schedules Bop's threshold; its gamma is the groups' ``lr``, scheduled by
  ``torch.optim.lr_scheduler`` (:class:`StepDecay`, :class:`LinearDecay`); :class:`LinearInterpolation` is the
  Bop2ndOrder authors' per-step linear schedule.
"""

from torchbop.optim.bop import Bop, bop
from torchbop.optim.bop2nd import Bop2ndOrder, bop2nd
from torchbop.optim.cema import CEMA, cema
from torchbop.optim.composite import CompositeOptimizer
from torchbop.optim.routing import bop_optimizer
from torchbop.optim.schedulers import LinearDecay, LinearInterpolation, StepDecay, ThresholdScheduler

__all__ = [
    "Bop",
    "Bop2ndOrder",
    "CEMA",
    "CompositeOptimizer",
    "LinearDecay",
    "LinearInterpolation",
    "StepDecay",
    "ThresholdScheduler",
    "bop",
    "bop2nd",
    "bop_optimizer",
    "cema",
]
