r"""The run's optimizer (:func:`build_optimizer`) and the rate schedules of ``TrainConfig.decay_schedule``.

``mode: bop``: Bop (or Bop2ndOrder, or CEMA) for the binary weights and Adam for everything else, joined in one
:class:`~torchbop.optim.CompositeOptimizer`; ``mode: latent``: one Adam/SGD over every parameter (with ``other_lr``,
a second group for the non-binary parameters). ``compile: true`` builds Bop with ``nonfinite="mask"`` (no host sync
per step: the loop checks the masked count, see :func:`nonfinite_entries`) and, on CUDA, the fused kernels.

=============  ===========================================  ==========================================================
schedule       what moves, and when                         value
=============  ===========================================  ==========================================================
``"step"``     gamma (latent mode: lr), once per epoch      ``rate * gamma_decay ** (epoch // gamma_decay_every)``
``"linear"``   gamma (latent mode: lr), once per epoch      ``rate * (1 - epoch / epochs)`` (ReActNet, AdamBNN)
``"interpolate"``  every rate with an ``*_end``, every step  ``(start - end) * (1 - step / total) + end``
=============  ===========================================  ==========================================================

:class:`~torchbop.optim.StepDecay` and :class:`~torchbop.optim.LinearDecay` are factors for
``torch.optim.lr_scheduler.LambdaLR``. :class:`~torchbop.optim.LinearInterpolation` is a value: the ``"interpolate"``
schedule sets gamma, tau, sigma and Adam's lr to it before every optimizer step, from the number of steps done
(:meth:`Optimization.set_interpolated_rates`), as the Bop2ndOrder authors' CIFAR-10 recipe does with Keras'
``PolynomialDecay(start, decay_steps, end, power=1.0)`` evaluated at the optimizer's ``iterations``
(CuauSuarez/Bop2ndOrder, ``bnn_optimization/models/binarynet_batch.py``, hyperparameters ``bop2ndOrder_CIFAR``;
``_get_decayed_hyper`` in ``bnn_optimization/optimizers.py``; Suarez-Ramirez et al., "A Bop and Beyond",
arXiv:2104.05124). Being a function of the step count alone, it needs no state of its own: a resumed run recomputes it
from the restored step counter.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from torchbop.metrics import FlipCounter
from torchbop.models import create_model
from torchbop.nn import named_binary_layers, split_binary_params
from torchbop.optim import CEMA, Bop, Bop2ndOrder, CompositeOptimizer
from torchbop.optim.schedulers import LinearDecay, LinearInterpolation, StepDecay
from torchbop.training.config import INTERPOLATED, TrainConfig

__all__ = ["Optimization", "build_model", "build_optimizer"]


def build_model(config: TrainConfig) -> nn.Module:
    """``create_model(config.model, mode=config.mode, **config.model_kwargs)``."""
    return create_model(config.model, mode=config.mode, **config.model_kwargs)


@dataclass
class Optimization:
    """What :func:`build_optimizer` returns: the optimizer, its per-epoch scheduler (None under ``"interpolate"``),
    the optimizer of the binary weights (``flipper``: Bop, Bop2ndOrder or CEMA; None in latent mode) and the flip
    counter (None for a model without binary layers)."""

    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR | None
    flipper: torch.optim.Optimizer | None
    counter: FlipCounter | None
    interpolations: dict[str, LinearInterpolation]

    def set_interpolated_rates(self, step: int) -> None:
        """``"interpolate"``: the rates of optimizer step ``step`` (steps done) into the groups: gamma (as ``"lr"``),
        tau and sigma into the Bop groups, lr into the others (Adam's; in latent mode every group)."""
        rates = {key: schedule(step) for key, schedule in self.interpolations.items()}
        flipper = {id(g) for g in self.flipper.param_groups} if self.flipper is not None else set()
        for group in self.optimizer.param_groups:
            if id(group) in flipper:
                for key, name in (("gamma", "lr"), ("threshold", "threshold"), ("sigma", "sigma")):
                    if key in rates:
                        group[name] = rates[key]
            elif "lr" in rates:
                group["lr"] = rates["lr"]

    def rates(self, config: TrainConfig) -> dict[str, float]:
        """gamma and tau of the first group (latent mode: lr; CEMA: alpha and gamma), for the logs; under
        ``"interpolate"`` also sigma and Adam's lr where they move."""
        groups = self.optimizer.param_groups
        if config.optimizer == "cema":
            return {"alpha": float(groups[0]["lr"]), "gamma": float(groups[0]["gamma"])}
        rates = {"gamma" if config.mode == "bop" else "lr": float(groups[0]["lr"])}
        if "threshold" in groups[0]:
            rates["threshold"] = float(groups[0]["threshold"])
        if config.sigma_end is not None:
            rates["sigma"] = float(groups[0]["sigma"])
        if config.lr_end is not None and config.mode == "bop" and len(groups) > 1:
            rates["lr"] = float(groups[-1]["lr"])
        return rates

    def nonfinite_entries(self) -> int:
        """compile path: how many binary-weight gradient entries Bop masked as inf/NaN so far (one host sync)."""
        counts = [
            s["nonfinite_entries"]
            for g in (self.flipper.param_groups if self.flipper is not None else [])
            if g.get("nonfinite") == "mask"
            for p in g["params"]
            if "nonfinite_entries" in (s := self.flipper.state.get(p, {}))
        ]
        return int(sum(int(c) for c in counts)) if counts else 0


def build_optimizer(config: TrainConfig, model: nn.Module, total_steps: int = 1) -> Optimization:
    """The optimizer of ``config`` over ``model`` (already on its device), its schedule and flip counter.

    ``total_steps``: the optimizer steps of the whole run, over which ``"interpolate"`` moves the rates.
    """
    cfg = config
    decay = (
        LinearDecay(cfg.epochs) if cfg.decay_schedule == "linear" else StepDecay(cfg.gamma_decay, cfg.gamma_decay_every)
    )
    device = next(model.parameters()).device
    fast: dict[str, Any] = {"nonfinite": "mask"} if cfg.compile else {}
    fused = cfg.compile and device.type == "cuda"
    flipper = None
    if cfg.mode == "bop":
        binary, other = split_binary_params(model)
        if not binary:
            raise ValueError(
                f"{type(model).__name__} has no binary layer for Bop to train; train a real-valued "
                "model with mode 'latent' and optimizer 'adam' or 'sgd'"
            )
        if fused:
            fast["fused"] = True
        if cfg.optimizer == "bop":
            flipper = Bop(binary, gamma=cfg.gamma, threshold=cfg.threshold, **fast)
        elif cfg.optimizer == "bop2nd":
            flipper = Bop2ndOrder(
                binary, gamma=cfg.gamma, sigma=cfg.sigma, threshold=cfg.threshold, unbiased=cfg.unbiased, **fast
            )
        else:  # CEMA has no fused kernel and no "mask" policy: eager, a gradient check at every step
            flipper = CEMA(binary, gamma=cfg.gamma, alpha=cfg.alpha)
        children = [
            flipper,
            *([torch.optim.Adam(other, lr=cfg.lr, **({"fused": True} if fused else {}))] if other else []),
        ]
        optimizer = CompositeOptimizer(*children, model=model)
        # Bop keeps gamma as its groups' "lr": the schedule decays gamma (CEMA: alpha), Adam's lr keeps factor 1
        lambdas = [decay] * len(flipper.param_groups) + [StepDecay()] * (
            len(optimizer.param_groups) - len(flipper.param_groups)
        )
    else:
        params: list[Any] = [p for p in model.parameters() if p.requires_grad]
        if cfg.other_lr is not None:  # two groups: the latent weights at lr, the rest at other_lr
            latent, rest = split_binary_params(model, modes=("latent",))
            params = [{"params": latent}, {"params": rest, "lr": cfg.other_lr}]
        if cfg.optimizer == "adam":
            optimizer = torch.optim.Adam(params, lr=cfg.lr, **({"fused": True} if fused else {}))
        else:
            optimizer = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum)
        lambdas = [decay] * len(optimizer.param_groups)
    # Bop reports its flips; with another optimizer the counter compares weight signs (and creates no state)
    has_binary = any(True for _ in named_binary_layers(model))
    counter = FlipCounter(model, optimizer if cfg.mode == "bop" else None) if has_binary else None
    interpolations: dict[str, LinearInterpolation] = {}
    scheduler = None
    if cfg.decay_schedule == "interpolate":
        interpolations = {
            key: LinearInterpolation(getattr(cfg, key), getattr(cfg, f"{key}_end"), total_steps)
            for key in INTERPOLATED
            if getattr(cfg, f"{key}_end") is not None
        }
    else:
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda=lambdas)
    return Optimization(optimizer, scheduler, flipper, counter, interpolations)
